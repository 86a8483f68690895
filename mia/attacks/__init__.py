"""Membership-inference attacks: each maps a batch of clean x0 to one score per sample, higher = member."""

from mia.attacks.base import Attack, SampleNoise
from mia.attacks.loss import LossAttack
from mia.attacks.noise_aggregation import NoiseAggregation
from mia.attacks.pia import PIA, PIAN
from mia.attacks.secmi import SecMI
from mia.attacks.sima import SimA

__all__ = ["PIA", "PIAN", "Attack", "LossAttack", "NoiseAggregation", "SampleNoise", "SecMI", "SimA"]
