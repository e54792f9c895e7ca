"""codepmp: CodePMP (preference-model pretraining on code preference pairs) from crawl to a promoted model."""

__version__ = "0.1.0"
