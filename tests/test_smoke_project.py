from nurture.spec.project import load_project
from tests.conftest import REPO


def test_the_shipped_project_validates():
    spec = load_project(REPO)
    assert spec.errors == []
    assert "cart_abandonment" in spec.journeys
