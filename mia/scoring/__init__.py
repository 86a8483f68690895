"""Scoring: the attack LightningModule, the prediction cache and the ``score`` engine around them."""
