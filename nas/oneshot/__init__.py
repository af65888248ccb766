"""One-shot strategies: a supernet trained once, then the network derived from it.

Importing this package registers them in `nas.strategies.SEARCHERS` (`proxyless`, `once-for-all`)."""

from nas.oneshot.elastic_supernet import ElasticSupernet
from nas.oneshot.ofa_config import OFATrainConfig
from nas.oneshot.ofa_eval import calibrated_model, recalibrate_bn, subnet_accuracy
from nas.oneshot.ofa_predictor import AccuracyPredictor, PredictorConfig
from nas.oneshot.ofa_specialize import BudgetError, EvolutionSettings, Specialization, specialize
from nas.oneshot.ofa_strategy import OnceForAllSearcher
from nas.oneshot.ofa_train import load_supernet, train_supernet
from nas.oneshot.proxyless_strategy import ProxylessSearcher

__all__ = ["AccuracyPredictor", "BudgetError", "ElasticSupernet", "EvolutionSettings", "OFATrainConfig",
           "OnceForAllSearcher", "PredictorConfig", "ProxylessSearcher", "Specialization", "calibrated_model",
           "load_supernet", "recalibrate_bn", "specialize", "subnet_accuracy", "train_supernet"]
