"""Built-in regularizers: L2 and L2-SP."""

from sftcore import hookimpl


@hookimpl
def register_regularizers(register):
    register(
        "l2", "sftcore_plugins.regularizers.l2:L2", "alpha/2 * ||w||^2 as a loss term (conv/linear weights by default)"
    )
    register(
        "l2_sp",
        "sftcore_plugins.regularizers.l2_sp:L2SP",
        "L2-SP: alpha/2 * ||w_S - w0_S||^2 + beta/2 * ||w_new||^2 (Li et al., ICML 2018)",
    )
