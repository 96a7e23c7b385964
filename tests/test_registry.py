"""One option checker for every registry: one message format, one check_choice."""
import pytest

from rlx.registry import Registry, check_choice


def _registries():
  import rlx.data  # noqa: F401  (registers the tasks and their rewards)
  from rlx.advantages import ESTIMATORS, FILTERS
  from rlx.data import TASKS
  from rlx.losses import LOSS_TERMS
  from rlx.rewards.registry import REWARD_FNS
  from rlx.advantages.transforms import TRANSFORMS
  return [(ESTIMATORS, "gdpo", "eps=0.0001"), (FILTERS, "dapo", "tol=0.0"),
          (LOSS_TERMS, "kl", "coef, term, estimator='k3'"),
          (REWARD_FNS, "length_limit", "max_length="),
          (TASKS, "arith", "max_len=16"), (TRANSFORMS, "conditioned", "threshold=1.0")]


@pytest.mark.parametrize("i", range(6))
def test_unknown_option_has_one_format_in_every_registry(i):
  registry, name, valid = _registries()[i]
  with pytest.raises(TypeError) as e:
    registry.check_options(name, {"bogus": 1})
  msg = e.value.args[0]
  assert msg.startswith(f"{registry.kind} {name!r}: unknown option 'bogus'. Valid options: ")
  assert valid in msg and "\n" not in msg


def test_choices_missing_options_and_types():
  reg = Registry("thing", skip=("n",))

  @reg.register("a", choices={"mode": ("x", "y")})
  def a(inputs, *, n, mode="x", scale=1.0, need):
    return inputs, n, mode, scale, need

  assert list(reg.options("a")) == ["mode", "scale", "need"]  # n is not an option
  assert reg.check_options("a", {"need": 1, "mode": "y"}) is a
  with pytest.raises(ValueError, match=r"^thing 'a': option mode='z' is not one of 'x', 'y'\.$"):
    reg.check_options("a", {"need": 1, "mode": "z"})
  with pytest.raises(TypeError, match="^thing 'a': missing required option 'need'"):
    reg.check_options("a", {})
  with pytest.raises(TypeError, match=r"option scale='big' must be a number \(default 1.0\)"):
    reg.check_options("a", {"need": 1, "scale": "big"})
  with pytest.raises(KeyError, match="Unknown thing 'aa'. Did you mean 'a'"):
    reg.check_options("aa", {})
  with pytest.raises(ValueError, match=r"^owner: option k=3 is not one of 1, 2\.$"):
    check_choice(3, (1, 2), "k", "owner")


def test_a_bad_choice_inside_an_estimator_fails_at_start_up():
  from rlx.train.config import check_traced, load_config
  cfg = load_config("gdpo.py")
  check_traced(cfg)
  cfg.advantage.options["missing"] = "bogus"
  with pytest.raises(ValueError, match=r"^config.advantage.options: .*missing='bogus' is not "
                     "one of 'leave_out', 'zero_fill'"):
    check_traced(cfg)
