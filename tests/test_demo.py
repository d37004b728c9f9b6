"""The demo's default comparison: every configuration is a valid press, each at both budgets."""

from restkv.demo import DEMO_METHODS, demo_configs


def test_default_demo_configurations_build_presses():
    configs = demo_configs(budgets=(128, 256))
    assert configs[0].method == "full" and len(configs) == 1 + 2 * len(DEMO_METHODS)
    assert len({c.label for c in configs}) == 1 + len(DEMO_METHODS)  # no two methods render alike
    for config in configs:
        press = config.press()
        if config.method != "full":
            assert press.budget == config.budget


def test_demo_shows_restkv_with_the_wide_kernel_and_the_auto_window():
    labels = {c.label for c in demo_configs()}
    assert "restkv(kernel_size=15,window_size=auto)" in labels and "restkv" in labels
