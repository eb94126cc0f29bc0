"""Examples of building new experiments from mtcolor's parts (see docs/library-example.md)."""
