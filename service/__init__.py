"""The serving core and the shared contracts (intents grammar, prompt, model card).

Importing this package is cheap: the engine, FastAPI and vLLM are imported by the modules that need them.
"""
