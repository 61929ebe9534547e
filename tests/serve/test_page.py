"""The web page in a real headless Chromium (Debian's `chromium` + `chromium-driver`): type a
sentence, see its entities highlighted by label with offsets; a screenshot is kept in artifacts/."""

from pathlib import Path

import pytest
import requests

ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
EMOJI_TEXT = "😀😀 张三 went to 北京大学 🎓 读书。"


def test_page_highlights_entities_by_label(server, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    api = requests.post(server.url + "/v1/ner", json={"text": EMOJI_TEXT}, timeout=60).json()
    entities = api["results"][0]["entities"]
    assert entities
    browser.get(server.url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#legend span")) == 4)
    legend = {chip.text: chip.value_of_css_property("background-color")
              for chip in browser.find_elements(By.CSS_SELECTOR, "#legend span")}
    assert list(legend) == ["地点", "人名", "地理实体", "组织"] and len(set(legend.values())) == 4
    assert len(browser.find_elements(By.CSS_SELECTOR, "#examples button")) >= 3

    box = browser.find_element(By.ID, "text")
    box.clear()
    browser.execute_script("arguments[0].value = arguments[1];", box, EMOJI_TEXT)  # emoji: no send_keys
    browser.find_element(By.ID, "run").click()
    wait.until(ready.text_to_be_present_in_element((By.ID, "status"), "entit"))
    marks = browser.find_elements(By.CSS_SELECTOR, "#result mark")
    assert [(int(m.get_attribute("data-start")), int(m.get_attribute("data-end")), m.get_attribute("data-label"))
            for m in marks] == [(e["start"], e["end"], e["label"]) for e in entities]
    for mark, e in zip(marks, entities):
        # The highlighted characters are the entity's (code points sliced correctly in JS).
        shown = browser.execute_script("return arguments[0].firstChild.textContent;", mark)
        assert shown == e["text"] and mark.value_of_css_property("background-color") == legend[e["label"]]
    sentence = browser.execute_script(
        "const c = document.getElementById('result').cloneNode(true);"
        "c.querySelectorAll('sup').forEach(s => s.remove()); return c.textContent;")
    assert sentence == EMOJI_TEXT
    rows = [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in browser.find_elements(By.CSS_SELECTOR, "#entities tbody tr")]
    assert rows == [[str(e["start"]), str(e["end"]), e["label"], e["text"]] for e in entities]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "serve-page.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

    # An example sentence runs on click.
    first = browser.find_element(By.CSS_SELECTOR, "#examples button")
    first.click()
    wait.until(lambda d: d.find_element(By.ID, "text").get_attribute("value") == first.text
               and ("entit" in d.find_element(By.ID, "status").text))


def test_page_offers_each_served_run(two_run_server, second_lora_run, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    url, b = two_run_server.url, second_lora_run.name
    candidates = ["张三在北京大学读书。", "😀 李四昨天去了上海。", "我们明天去南京看长江。",
                  "联合国秘书长访问了日内瓦。"]
    answers = {run: requests.post(url + "/v1/ner", json={"texts": candidates, "run": run},
                                  timeout=60).json()["results"] for run in (None, b)}
    # A sentence the two runs answer differently, so the page must really send the choice.
    sentence, api_result = next((t, rb) for t, ra, rb in zip(candidates, answers[None], answers[b])
                                if ra["entities"] != rb["entities"])
    browser.get(url + "/")
    wait = WebDriverWait(browser, 60)
    wait.until(lambda d: d.find_element(By.ID, "runs").is_displayed())
    choice = Select(browser.find_element(By.ID, "runs"))
    runs = requests.get(url + "/v1/models", timeout=10).json()["data"]
    assert [o.text for o in choice.options] == [m["id"] for m in runs]
    choice.select_by_visible_text(b)
    browser.execute_script("document.getElementById('text').value = arguments[0];", sentence)
    browser.find_element(By.ID, "run").click()
    wait.until(lambda d: "entit" in d.find_element(By.ID, "status").text)
    marks = [(int(m.get_attribute("data-start")), m.get_attribute("data-label"))
             for m in browser.find_elements(By.CSS_SELECTOR, "#result mark")]
    assert marks == [(e["start"], e["label"]) for e in api_result["entities"]]
