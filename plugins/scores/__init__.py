"""Built-in transferability scores: LogME, LEEP, NCE and H-score as their authors wrote them, plus two cheap
empirical ones. Each ranks candidate backbones from their features on the target data, without training.

Registered lazily: importing this package does not import torch (``sft list`` stays fast).
"""

from sftcore import hookimpl


@hookimpl
def register_scores(register):
    register(
        "logme",
        "sftcore_plugins.scores.logme:LogME",
        "LogME: mean log maximum evidence of a Bayesian linear model, features -> one-hot labels (You et al., 2021)",
    )
    register(
        "leep",
        "sftcore_plugins.scores.leep:LEEP",
        "LEEP: log expected empirical prediction through the source classifier (Nguyen et al., 2020)",
    )
    register(
        "nce",
        "sftcore_plugins.scores.nce:NCE",
        "NCE: minus the entropy of target labels given the source classifier's labels (Tran et al., 2019)",
    )
    register(
        "hscore",
        "sftcore_plugins.scores.hscore:HScore",
        "H-score: tr(cov(f)^+ cov(E[f|y])), class separation of the features (Bao et al., 2019)",
    )
    register(
        "ncm_accuracy",
        "sftcore_plugins.scores.empirical:NCMAccuracy",
        "Leave-one-out accuracy of a cosine nearest-class-mean classifier on the features",
    )
    register(
        "logistic_accuracy",
        "sftcore_plugins.scores.empirical:LogisticAccuracy",
        "Stratified k-fold accuracy of an L2-regularised logistic regression on the features (L-BFGS)",
    )
