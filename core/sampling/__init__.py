"""Time grids, guidance, solvers and the sampling loop."""
