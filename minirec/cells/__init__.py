"""Parameterised cells (DESIGN §4 cell API): ``init_params``, ``forward``,
``backward``, ``step_forward``, ``step_backward``, ``METHODS``, ``BACKENDS``."""
