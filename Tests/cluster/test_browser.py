"""The two web pages in a real headless Chromium, against a real cluster: a visitor and an
agent chat both ways, and text stays text."""

import os
import shutil
import tempfile

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from harness import wait_until

SCREENSHOTS = os.environ.get("PARLEY_SCREENSHOTS") or tempfile.mkdtemp(prefix="parley-screens-")


def make_driver():
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1200,800"):
        options.add_argument(argument)
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(30)
    return driver


@pytest.fixture(scope="module")
def browsers():
    visitor, agent = make_driver(), make_driver()
    yield visitor, agent
    visitor.quit()
    agent.quit()


def texts(driver, selector="#messages .event"):
    return [e.text for e in driver.find_elements(By.CSS_SELECTOR, selector)]


def test_visitor_and_agent_chat_in_the_browser(cluster, browsers):
    visitor, agent = browsers
    wait = lambda driver: WebDriverWait(driver, 20)
    email, password = cluster.new_agent("Bea")

    visitor.get(cluster.lb_url + "/")
    wait(visitor).until(EC.visibility_of_element_located((By.ID, "start-form")))
    visitor.find_element(By.ID, "name").send_keys("Vic <img src=x onerror=alert(1)>")
    visitor.find_element(By.ID, "topic").send_keys("shipping")
    visitor.find_element(By.ID, "start-button").click()
    wait(visitor).until(EC.visibility_of_element_located((By.ID, "text")))
    markup = "<b>bold?</b> & <script>alert(1)</script>"
    visitor.find_element(By.ID, "text").send_keys(markup)
    visitor.find_element(By.ID, "send-button").click()
    wait(visitor).until(lambda d: any(markup in t for t in texts(d)))

    agent.get(cluster.agent_url() + "/")
    wait(agent).until(EC.visibility_of_element_located((By.ID, "login-form")))
    agent.find_element(By.ID, "email").send_keys(email)
    agent.find_element(By.ID, "password").send_keys(password)
    agent.find_element(By.ID, "login-button").click()
    item = wait(agent).until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#conversation-list .conversation button, #conversation-list .conversation")))
    assert "Vic <img src=x onerror=alert(1)>" in agent.find_element(By.ID, "conversation-list").text
    item.click()
    wait(agent).until(EC.element_to_be_clickable((By.ID, "claim-button"))).click()
    wait(agent).until(lambda d: any(markup in t for t in texts(d)))
    wait(agent).until(EC.element_to_be_clickable((By.ID, "text"))).send_keys("Hi Vic, it ships today")
    agent.find_element(By.ID, "send-button").click()

    wait(visitor).until(lambda d: any("it ships today" in t for t in texts(d)))
    # Typing is shown while it happens and never stored as an event.
    count = len(texts(visitor))
    box = agent.find_element(By.ID, "text")

    def agent_keeps_typing(driver):
        # Like a person: a key now and then, while the signal is throttled to one per 2 s.
        box.send_keys(".")
        indicator = driver.find_element(By.ID, "typing")
        return indicator.is_displayed() and "Bea" in indicator.text

    WebDriverWait(visitor, 20, poll_frequency=0.4).until(agent_keeps_typing)
    assert len(texts(visitor)) == count
    agent.find_element(By.ID, "text").clear()
    # Markup typed by users is shown as text: no element was created from it.
    assert not visitor.find_elements(By.CSS_SELECTOR, "#messages b, #messages script, #messages img")
    assert not agent.find_elements(By.CSS_SELECTOR, "#messages b, #messages script, #messages img, #conversation-list img")
    seqs = [int(e.get_attribute("data-seq")) for e in visitor.find_elements(By.CSS_SELECTOR, "#messages .event")]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs)) and seqs[0] == 1
    visitor.save_screenshot(os.path.join(SCREENSHOTS, "visitor.png"))
    agent.save_screenshot(os.path.join(SCREENSHOTS, "agent.png"))

    # A reload resumes the same conversation from the server.
    visitor.refresh()
    wait(visitor).until(lambda d: any("it ships today" in t for t in texts(d)))
    assert len(texts(visitor)) == len(seqs)
