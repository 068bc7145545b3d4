"""The composition root: the one place that builds a production pipeline from settings.

The ``compose`` command, the compose consumer and the image workers all get their pipeline here:
AWS clients, the EC2 boot tester, the ResultsDB reporter and the event sinks (log, bus). Nothing
here imports the demo or the stand-ins; the demo builds its own pipeline around stand-ins.
"""

from __future__ import annotations

from fedimg.aws.clients import Clients
from fedimg.config import Settings
from fedimg.errors import ConfigError
from fedimg.events import Sink, fan_out, log_sink
from fedimg.pipeline import ComposeOutcome, Pipeline, Tester, no_test


def build_pipeline(settings: Settings, extra_sinks: tuple[Sink, ...] = ()) -> Pipeline:
    """The production pipeline for ``settings``: bus messages, EC2 boot test, ResultsDB."""
    from fedimg.report import ResultsReporter

    sinks: list[Sink] = [log_sink, *extra_sinks]
    if settings.messaging.publish:
        from fedimg.announce import bus_sink

        sinks.append(bus_sink(environment=settings.messaging.environment))
    clients = Clients(settings.aws)
    return Pipeline(
        settings,
        clients,
        sink=fan_out(sinks),
        tester=boot_tester(settings, clients),
        reporter=ResultsReporter(settings.resultsdb),
    )


def boot_tester(settings: Settings, clients: Clients) -> Tester:
    """The EC2 boot test (none when ``test.enabled`` is false); it needs the CIDR fedimg's SSH
    connections come from."""
    from fedimg.aws.boottest import Ec2BootTester

    if not settings.test.enabled:
        return no_test
    if not settings.test.ssh_cidr:
        raise ConfigError(
            "test.ssh_cidr: required when the EC2 boot test runs (test.enabled = true): "
            "the CIDR block fedimg's SSH connections to the test instance come from"
        )
    return Ec2BootTester(settings, clients)


def after_compose(settings: Settings, clients: Clients, outcome: ComposeOutcome) -> None:
    """What production does once a compose has ended: prune by the retention policy when
    ``retention.prune_after_compose`` (before the catalog, so that it shows what is left), then
    rewrite the catalog when ``catalog.output_dir`` is set. Neither ever fails the compose."""
    if settings.retention.prune_after_compose:
        from fedimg.aws.prune import prune_after_compose

        prune_after_compose(settings, clients, outcome.compose_id)
    if settings.catalog.output_dir:
        from fedimg.catalog import refresh_after_publish

        refresh_after_publish(settings, clients, outcome, settings.catalog.output_dir)
