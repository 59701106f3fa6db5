"""Offline steps that sample the starting model before training, one module each, on the shared loop in sampling.py:
dph (pi0's samples for DPH-RL), ikea (knowledge-boundary data), adaptthink (R_ref), klcf (checklists)."""
