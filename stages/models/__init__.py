"""The networks' library: the one loader of the base model, the tiny Stable Diffusion and its
shipped weights (tiny_sd/), LoRA training data and checkpoints, the type classifier and the
prompt-following judge."""
