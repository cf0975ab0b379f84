from broker.config import Config
from broker.runtime.reload import BROKER_RELOADABLE, EDGE_RELOADABLE, plan_reload


def test_edge_plan_applies_reloadable_and_reports_the_rest():
    running = Config(routes=("* 127.0.0.1:1",), client_port=7000)
    new = Config(routes=("* 127.0.0.1:2",), client_port=7001, client_maxconn=5, sig_key="k")
    plan = plan_reload(running, new, EDGE_RELOADABLE)
    assert set(plan.applied) == {"routes", "client_maxconn", "sig_key"}
    assert plan.needs_restart == ("client_port",)
    assert plan.config.routes == ("* 127.0.0.1:2",)
    assert plan.config.client_port == 7000  # kept: a restart applies it
    assert plan.config.client_maxconn == 5


def test_broker_plan_and_no_change():
    running = Config()
    assert plan_reload(running, Config(), BROKER_RELOADABLE).applied == ()
    plan = plan_reload(running, Config(history_max_items=5, http_port=1), BROKER_RELOADABLE)
    assert plan.applied == ("history_max_items",)
    assert plan.needs_restart == ("http_port",)
    assert plan.config.http_port is None
