"""The local stack: the official emulators, every function under functions-framework
as its own process with emulator push subscriptions, and the provider simulators."""
