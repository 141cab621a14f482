"""Model definitions, loaders and the registry of models a person added."""
