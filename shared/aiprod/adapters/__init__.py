"""Adapters: Firestore, Pub/Sub, providers, storage, outbound HTTP (netsafety), media
probing. They do I/O behind small interfaces and decide no policy."""
