"""Planning: a spec (spec.py) becomes cells (grid.py), every one checked before anything runs (validate.py), with
its cost measured when asked (cost.py)."""
