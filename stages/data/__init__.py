"""The dataset's library: the Pokémon table and its types, downloads with retries, image
decoding and squaring, and the procedural creatures of `data.source: synthetic`."""
