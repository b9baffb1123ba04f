"""A real headless Chromium for the browser tests, driven by Selenium through Debian's chromedriver.

Why the system browser: Selenium Manager and Playwright download their own browsers, which this
project's machines cannot reach; Debian's `chromium` and `chromium-driver` packages are the browser
and driver of one version, installed by `.ci/run` (they need root: their files live under /usr).
Selenium is pointed at both binaries explicitly, so it never looks for a download. A machine
without them fails the browser tests with the command that installs them, not a skip: the console's
safety (scripts in events stay inert) is only proven in a browser.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

INSTALL_HINT = "apt-get install chromium chromium-driver (what .ci/run does; root needed)"


def system_browser() -> tuple[str, str]:
    """The paths of Debian's chromium and chromedriver; fails the test, naming the fix, without them."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.fail(f"the browser tests need Chromium and its driver on PATH: {INSTALL_HINT}")
    return browser, driver


@contextmanager
def headless_chromium(width: int = 1280, height: int = 1000) -> Iterator[webdriver.Chrome]:
    """A fresh headless Chromium session (its own profile, no extensions, no network but what the
    page asks for), closed afterwards."""
    browser, driver = system_browser()
    options = Options()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in CI containers: Chromium's sandbox refuses to start as root
        "--disable-dev-shm-usage",  # /dev/shm is 64 MB in containers
        "--disable-gpu",
        "--disable-extensions",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager try the network
    session = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    try:
        session.set_page_load_timeout(30)
        yield session
    finally:
        session.quit()
