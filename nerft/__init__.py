"""nerft: fine-tune chat LLMs into accurate Chinese named-entity recognisers."""

__version__ = "0.1.0"
