"""Captioning: describe images with a local vision-language model or a local OpenAI-compatible server."""
