"""Text to image: the request, prompts, the engine, and the service the app runs it in."""
