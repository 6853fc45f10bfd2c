"""The pipeline's code. Each module at this level is one command, run as `python -m stages.<name>`:
the DVC stages of dvc.yaml (check_params is `stages.params`) and `stages.pretrain_tiny`, which made
the shipped tiny base model. The library they share lies in three subpackages:

- `stages.common`: plumbing of every stage: paths, the params schema, errors, the `__main__`
  wrapper, atomic writes, deterministic torch, dvclive.
- `stages.data`: the dataset: the Pokémon table, downloads, image decoding, synthetic creatures.
- `stages.models`: the networks: loading the base model, the tiny model and its shipped weights
  (tiny_sd/), LoRA training data and checkpoints, the type classifier.
"""
