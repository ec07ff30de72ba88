"""Model backends that turn decoded images into semantic and instance maps (see docs/LABELERS.md)."""
