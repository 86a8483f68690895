"""Membership-inference attacks: each maps a batch of clean x0 to one score per sample, higher = member.

One module per attack; ``base`` is the interface, ``moves`` the closed-form DDPM/DDIM moves they share,
``sample_noise`` the per-sample seeded noise, ``aggregation`` NA's statistics, ``similarity`` the black-box
attacks' comparisons (those attacks reach the model only through ``mia.targets.generation``).
"""

from mia.attacks.base import Attack
from mia.attacks.clid import CLiDClassifier, CLiDThreshold
from mia.attacks.gsa import GSA1, GSA2
from mia.attacks.loss import LossAttack
from mia.attacks.noise_aggregation import NoiseAggregation
from mia.attacks.pia import PIA, PIAN
from mia.attacks.reconstruction import Reconstruction
from mia.attacks.rediffuse import ReDiffuse
from mia.attacks.sample_noise import SampleNoise
from mia.attacks.secmi import SecMI
from mia.attacks.sima import SimA

__all__ = ["GSA1", "GSA2", "PIA", "PIAN", "Attack", "CLiDClassifier", "CLiDThreshold", "LossAttack", "NoiseAggregation",
           "ReDiffuse", "Reconstruction", "SampleNoise", "SecMI", "SimA"]
