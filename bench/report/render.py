"""Jinja2 environment of the report and comparison pages: package templates, autoescaping on."""

from __future__ import annotations

import jinja2

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("bench.report", "templates"),
    autoescape=True,  # model names and error messages are untrusted text
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def render(template: str, **context) -> str:
    """Render one template of bench/report/templates with `context`."""
    return _ENV.get_template(template).render(**context)
