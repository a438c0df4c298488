"""The operators' page, `/ops`: dead letters with a replay button, recent jobs and each job's
timeline, a number's history and the latest reconcile findings, behind an operator key."""

from producers.api.ops_page.page import install_ops_page

__all__ = ["install_ops_page"]
