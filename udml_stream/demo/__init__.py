"""The demo: an AV-Digits scene played through the live pipeline with scripted degradations."""
