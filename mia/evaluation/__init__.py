"""The evaluation protocol: metrics (AUC, ASR, TPR@FPR, intervals), the result object, the timestep profile."""
