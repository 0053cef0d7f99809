"""Evaluate: held-out contexts with and without the LoRA; identity consistency, prompt
fidelity, memorisation and cast bleed metrics; the convergence rule.
"""
