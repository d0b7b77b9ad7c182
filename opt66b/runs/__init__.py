"""The run infrastructure: what a run of the study writes, resumes from and records, and the command-line
grammar every sub-command shares. Nothing of the model (the decoder, its weights, placement and streaming:
the modules of opt66b/ itself) imports from here; everything here may use the model.

    options.py     the shared argparse grammar (model, output, seed, plan options; no torch)
    settings.py    StepSettings: one frozen settings object per step, from the command line to the library
    loading.py     load(...): model + tokenizer + the description every fingerprint uses
    layout.py      every directory and file name a run writes
    store.py       fingerprinted unit files (reuse only what the same inputs made)
    identity.py    content identity of checkpoints and tokenizer files, cached
    results.py     strict JSON, tensors with metadata, run metadata, output directory checks
    distributed.py torchrun processes: rank, world, the split of units, barriers
    diagnose.py    where a non-finite number comes from (which weight file and tensor)
    mask_files.py  head / FFN mask files
    commands.py    the model-level sub-commands: convert, device-map
"""
