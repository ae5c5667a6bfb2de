"""percept.functional: the metrics as plain functions, one module per family (see DESIGN.md)."""

# ---- deep metrics (percept.functional.deep) -------------------------------------------------------------
from percept.functional.deep import deeploss as deeploss
from percept.functional.deep import dps as dps
from percept.functional.deep import elpips as elpips
from percept.functional.deep import lpips as lpips

# ---- end of deep metrics ---------------------------------------------------------------------------------
