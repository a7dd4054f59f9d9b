"""Adapters: Firestore, Pub/Sub, providers, storage, metrics. They do I/O and decide no policy."""
