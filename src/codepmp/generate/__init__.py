"""Text generation below the stages that use it (synthesis, policy sampling, best-of-N pools): the `Backend`
interface and its engines (transformers with continuous batching, an OpenAI-compatible HTTP client, vLLM,
llama.cpp) and `codepmp serve`, the HTTP server over the transformers engine."""
