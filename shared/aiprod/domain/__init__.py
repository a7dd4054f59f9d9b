"""Pure domain code: job model, lifecycle, routing, pricing. No I/O, no Google clients."""
