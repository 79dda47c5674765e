"""Profiles: validated on creation, printable, and picked by name with a helpful error."""

import pytest

from course_utils.models import MODEL_MODULES, import_all
from course_utils.profiles import PROFILE_NAMES, Profile, select_profile


def test_profiles_are_validated_and_printable():
    with pytest.raises(ValueError, match="smoke"):
        Profile(name="fast", epochs=1, batch_size=2)
    with pytest.raises(ValueError, match="epochs"):
        Profile(name="smoke", epochs=0, batch_size=2)
    with pytest.raises(ValueError, match="warmup_epochs"):
        Profile(name="smoke", epochs=2, batch_size=2, warmup_epochs=3)
    text = Profile(name="workshop", epochs=2, batch_size=8, note="sized for a CPU").describe()
    assert text.startswith("profile workshop: sized for a CPU") and "batch_size" in text


def test_select_profile_names_the_choices():
    profiles = {name: Profile(name=name, epochs=1, batch_size=2) for name in PROFILE_NAMES}
    assert select_profile(profiles, "full") is profiles["full"]
    with pytest.raises(ValueError, match=r"choose one of \['full', 'smoke', 'workshop'\]"):
        select_profile(profiles, "huge")


@pytest.mark.parametrize("module_name", MODEL_MODULES)
def test_every_model_module_has_the_three_profiles(module_name):
    module = import_all()[module_name]
    assert set(module.PROFILES) == set(PROFILE_NAMES)
    for name, profile in module.PROFILES.items():
        assert isinstance(profile, Profile) and profile.name == name and profile.note
