"""prune: head / FFN importance, rankings and masks, pruning sweeps and rank correlations (Bansal et al. 2023 §4-6).

masks.py: rankings, p% masks, aggregate importance and mask files; stats.py: Spearman / Pearson in
plain Python; correlate.py: `run.py correlate`. Import submodules directly (nothing heavy here).
"""
