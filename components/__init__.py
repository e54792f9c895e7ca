"""KFP v2 components, one folder per stage, each a thin wrapper over `codepmp.stages`."""
