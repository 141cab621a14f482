"""The scene world (flat shapes, colours, places, relations): demo data and prompt-alignment scoring."""
