"""The two web pages in a real headless Chromium, against a real cluster: a visitor and an
agent chat both ways, and text stays text; a supervisor transfers a conversation in the console."""

import hashlib
import hmac
import os
import shutil
import tempfile

import pytest
import requests
from selenium import webdriver
from selenium.common.exceptions import (ElementClickInterceptedException, ElementNotInteractableException,
                                        NoSuchElementException, StaleElementReferenceException)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.select import Select
from selenium.webdriver.support.ui import WebDriverWait

from harness import AgentClient, Visitor, wait_until

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
    # The console's socket is live: the reply goes over it.
    wait(agent).until(lambda d: d.find_element(By.ID, "status").get_attribute("data-state") == "live")
    wait(agent).until(EC.element_to_be_clickable((By.ID, "text"))).send_keys("Hi Vic, it ships today")
    agent.find_element(By.ID, "send-button").click()

    wait(visitor).until(lambda d: any("it ships today" in t for t in texts(d)))
    # The reply went over the console's live socket: no request to .../messages was made.
    assert agent.execute_script('return performance.getEntriesByType("resource").filter((e) => e.name.endsWith("/messages")).length') == 0
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


def console_login(driver, base_url, email, password):
    """Signs in to the agent console afresh, whoever was signed in before."""
    driver.get(base_url + "/")
    driver.delete_all_cookies()
    driver.refresh()
    WebDriverWait(driver, 20).until(EC.visibility_of_element_located((By.ID, "login-form")))
    driver.find_element(By.ID, "email").send_keys(email)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login-button").click()
    WebDriverWait(driver, 20).until(EC.visibility_of_element_located((By.ID, "app-view")))


def click(driver, selector):
    """Clicks an element of the list, which is re-rendered by live updates at any moment."""
    def attempt(d):
        d.find_element(By.CSS_SELECTOR, selector).click()
        return True
    WebDriverWait(driver, 20, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException,
                                                  ElementNotInteractableException, ElementClickInterceptedException)).until(attempt)


def open_conversation(driver, tab, conversation, visitor_name):
    driver.find_element(By.ID, f"tab-{tab}").click()
    click(driver, f'#conversation-list .conversation[data-id="{conversation}"] button')
    WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "conversation-title").text == visitor_name)


def test_a_supervisor_transfers_a_conversation_in_the_console(cluster, browsers):
    _, console = browsers
    wait = WebDriverWait(console, 20)
    first = AgentClient(cluster.agent_url(), *cluster.new_agent("Ada"))
    second = AgentClient(cluster.agent_url(), *cluster.new_agent("Ben"))
    visitor = Visitor(cluster.lb_url)
    visitor.start(name="Tess")
    conversation = visitor.conversation
    assert first.claim(conversation).status_code == 200

    console_login(console, cluster.agent_url(), *cluster.new_agent("Sue", role="supervisor"))
    open_conversation(console, "open", conversation, "Tess")
    wait.until(lambda d: "Assigned to Ada" in d.find_element(By.ID, "conversation-meta").text)
    # A supervisor may close a conversation assigned to someone else, and export it.
    assert console.find_element(By.ID, "close-button").is_enabled()
    assert not console.find_element(By.ID, "conversation-verified").is_displayed()
    export = wait.until(EC.visibility_of_element_located((By.ID, "export-link")))
    assert export.get_attribute("href").endswith(f"/v1/agent/conversations/{conversation}/export")
    cookies = {c["name"]: c["value"] for c in console.get_cookies()}
    transcript = requests.get(export.get_attribute("href"), cookies=cookies, timeout=10)
    assert transcript.status_code == 200 and "attachment" in transcript.headers["Content-Disposition"]
    assert transcript.json()["conversation"]["id"] == conversation

    # The choices are the active agents but the current assignee.
    wait.until(EC.visibility_of_element_located((By.ID, "transfer-form")))
    option = f'#transfer-agent option[value="{second.agent["id"]}"]'
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, option))
    assert not console.find_elements(By.CSS_SELECTOR, f'#transfer-agent option[value="{first.agent["id"]}"]')
    Select(console.find_element(By.ID, "transfer-agent")).select_by_value(second.agent["id"])
    console.find_element(By.ID, "transfer-button").click()

    note = "Sue transferred the conversation to Ben"
    wait.until(lambda d: note in texts(d, '#messages .event[data-type="transferred"]'))
    wait.until(lambda d: "Assigned to Ben" in d.find_element(By.ID, "conversation-meta").text)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'#transfer-agent option[value="{first.agent["id"]}"]')
               and not d.find_elements(By.CSS_SELECTOR, option))
    assert console.find_element(By.ID, "conversation-error").get_attribute("textContent") == ""
    summary = second.get(f"/v1/agent/conversations/{conversation}").json()["conversation"]
    assert summary["status"] == "open" and summary["assigned_agent"]["id"] == second.agent["id"]
    assert cluster.psql(f"SELECT count(*) FROM events WHERE conversation_id = '{conversation}' AND type = 'transferred'") == "1"
    visitor.poll_until(lambda seen: any(e["type"] == "transferred" and e["agent"]["id"] == second.agent["id"] for e in seen))
    console.save_screenshot(os.path.join(SCREENSHOTS, "supervisor.png"))

    # A plain agent sees the conversation and the note, but neither transfer nor export, and
    # cannot close a conversation assigned to someone else.
    console_login(console, cluster.agent_url(), *cluster.new_agent("Pat"))
    open_conversation(console, "open", conversation, "Tess")
    wait.until(lambda d: "Assigned to Ben" in d.find_element(By.ID, "conversation-meta").text)
    wait.until(lambda d: note in texts(d, '#messages .event[data-type="transferred"]'))
    assert not console.find_element(By.ID, "transfer-form").is_displayed()
    assert not console.find_element(By.ID, "export-link").is_displayed()
    assert not console.find_element(By.ID, "close-button").is_enabled()


def test_the_console_marks_a_verified_visitor(cluster, browsers):
    _, console = browsers
    secret = "a-shared-secret-of-at-least-32-bytes!!"
    gateway = cluster.add_visitor_gateway("vg-verified", extra_args=["--identity-secret", secret])
    try:
        wait_until(lambda: gateway.health().status_code == 200, what="vg-verified up")
        user = "cust-42 <b>x</b>"
        started = requests.post(f"http://127.0.0.1:{gateway.http}/v1/conversations", timeout=10, json={
            "name": "Vera", "user_id": user, "user_hash": hmac.new(secret.encode(), user.encode(), hashlib.sha256).hexdigest()})
        assert started.status_code == 201, started.text
        conversation = started.json()["conversation_id"]
    finally:
        gateway.stop()

    console_login(console, cluster.agent_url(), *cluster.new_agent("Val"))
    item = f'#conversation-list .conversation[data-id="{conversation}"]'
    # The list is re-rendered by live updates, so the badge is looked up afresh until it shows.
    WebDriverWait(console, 20, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)).until(
        lambda d: d.find_element(By.CSS_SELECTOR, f"{item} .verified").get_attribute("textContent") == f"Verified: {user}")
    open_conversation(console, "queued", conversation, "Vera")
    header = WebDriverWait(console, 20).until(EC.visibility_of_element_located((By.ID, "conversation-verified")))
    assert header.get_attribute("textContent") == f"Verified: {user}"
    # The user id is text, never markup.
    assert not console.find_elements(By.CSS_SELECTOR, "#conversation-list b, #conversation-verified b")
