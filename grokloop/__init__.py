"""grokloop: looped transformers and the long-run training that makes them grok."""
