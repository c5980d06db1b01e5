"""The web interface in a real browser: headless Chromium through Debian's
chromedriver and python3-selenium, against a running `alknet serve`.

Run by tests/e2e/web.rs with: BASE_URL ADMIN_TOKEN BOB_TOKEN SHOTS_DIR WORK_DIR.
Every wait is for a condition in the page (WebDriverWait), never a sleep.
Prints one line per step; exits non-zero on the first failed check.
"""

import json
import os
import sys
import time
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import (JavascriptException, NoAlertPresentException,
                                        StaleElementReferenceException)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

BASE, ADMIN, BOB, SHOTS, WORK = sys.argv[1:6]
os.makedirs(SHOTS, exist_ok=True)
DOWNLOADS = os.path.join(WORK, "downloads")
os.makedirs(DOWNLOADS, exist_ok=True)


def browser(size="1280,900", javascript=True):
    opts = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=" + size):
        opts.add_argument(flag)
    prefs = {
        "download.default_directory": DOWNLOADS,
        "download.prompt_for_download": False,
    }
    if not javascript:
        prefs["profile.managed_default_content_settings.javascript"] = 2
    opts.add_experimental_option("prefs", prefs)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    driver.set_page_load_timeout(60)
    return driver


def check(cond, what):
    if not cond:
        print("FAILED: " + what, flush=True)
        sys.exit(1)
    print("ok: %s (%.1f s)" % (what, time.monotonic() - START), flush=True)


step = [0]
START = time.monotonic()


def shot(driver, name):
    step[0] += 1
    driver.save_screenshot(os.path.join(SHOTS, "%02d-%s.png" % (step[0], name)))


def wait(driver, cond, seconds=30):
    # A page that reloads under a check (after an upload) is checked again.
    ignored = (StaleElementReferenceException, JavascriptException)
    return WebDriverWait(driver, seconds, ignored_exceptions=ignored).until(cond)


def sign_in(driver, token):
    driver.get(BASE + "/")
    wait(driver, EC.presence_of_element_located((By.ID, "token")))
    shot(driver, "sign-in")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.CSS_SELECTOR, "form[action='/-/login'] button").click()
    wait(driver, EC.title_contains("Buckets"))


def rows(driver):
    return driver.find_elements(By.CSS_SELECTOR, "#listing tbody tr")


def names(driver):
    return driver.execute_script(
        "return [...document.querySelectorAll('#listing tbody tr td:first-child a')].map(a => a.textContent)")


def submit_upload(driver, path, name):
    """Chooses `path` in the upload form, sends it, and waits for the page
    the script reloads when the commit is made."""
    driver.execute_script("document.body.dataset.before = 'yes'")
    driver.find_element(By.ID, "files").send_keys(path)
    driver.find_element(By.CSS_SELECTOR, "#upload button[type=submit]").click()
    wait(driver, lambda d: d.execute_script("return document.body.dataset.before") is None and name in names(d))


def on_failure(driver, e):
    shot(driver, "failure")
    print("FAILED at %s: %r\n%s" % (driver.current_url, e, driver.find_element(By.TAG_NAME, "main").text[:2000]),
          flush=True)
    sys.exit(1)


admin = browser()
try:
    # Sign in, see the buckets.
    sign_in(admin, ADMIN)
    shot(admin, "buckets")
    check("docs" in admin.page_source, "the signed-in admin sees bucket docs")

    # A file named like markup shows as text, and no script ran.
    admin.get(BASE + "/-/b/docs/")
    wait(admin, EC.presence_of_element_located((By.ID, "listing")))
    shot(admin, "docs")
    # (`/` cannot be in a name: <script>alert(1)</script> is a directory and a file.)
    check("<script>alert(1)</" in names(admin), "a directory named <script>alert(1)< is listed as text")
    check("<img src=x onerror=alert(1)>" in names(admin), "a file named <img src=x onerror=alert(1)> is listed as text")
    try:
        admin.switch_to.alert
        alerted = True
    except NoAlertPresentException:
        alerted = False
    check(not alerted, "no script from a file name ran")

    # Live: another writer's commit shows up in the open listing, no reload.
    admin.execute_script("document.body.dataset.before = 'yes'")
    put = urllib.request.Request(BASE + "/api/v1/b/docs/main/live.txt", data=b"from elsewhere\n", method="PUT",
                                 headers={"Authorization": "Bearer " + ADMIN})
    urllib.request.urlopen(put).read()
    wait(admin, lambda d: "live.txt" in names(d))
    check(admin.execute_script("return document.body.dataset.before") == "yes",
          "another writer's file appears in the open listing without a reload")
    shot(admin, "live")

    # Page a large directory (1,000 entries, 200 a page), every name once, in order.
    admin.get(BASE + "/-/b/docs/many/")
    seen = []
    while True:
        wait(admin, EC.presence_of_element_located((By.ID, "listing")))
        seen.extend(names(admin))
        nxt = admin.find_elements(By.CSS_SELECTOR, "a[rel=next]")
        if len(seen) <= 200:
            shot(admin, "large-directory")
        if not nxt:
            break
        nxt[0].click()
    check(seen == ["e%04d" % i for i in range(1000)], "1,000 entries over %d pages, in order" % ((len(seen) + 199) // 200))
    # Sorted by size, largest first: the one big entry leads.
    admin.get(BASE + "/-/b/docs/?sort=size&desc=1")
    wait(admin, EC.presence_of_element_located((By.ID, "listing")))
    check(names(admin)[0] == "big.bin", "sorting by size puts the largest file first")

    # Upload a file with the form: listed, one commit, bytes intact.
    admin.get(BASE + "/-/b/docs/")
    wait(admin, EC.presence_of_element_located((By.ID, "files")))
    upload = os.path.join(WORK, "photo-notes.txt")
    body = ("notes from the browser\n" * 2000).encode()
    with open(upload, "wb") as f:
        f.write(body)
    submit_upload(admin, upload, "photo-notes.txt")
    shot(admin, "uploaded")
    check("photo-notes.txt" in names(admin), "the uploaded file is listed")

    # Open it: facts and a text preview; download it and compare bytes.
    admin.find_element(By.LINK_TEXT, "photo-notes.txt").click()
    wait(admin, EC.presence_of_element_located((By.CSS_SELECTOR, "pre.code")))
    shot(admin, "file")
    check("notes from the browser" in admin.find_element(By.CSS_SELECTOR, "pre.code").text, "the file shows a preview")
    blake = admin.find_element(By.CSS_SELECTOR, "code.hash").text
    check(len(blake) == 64, "the file page shows its BLAKE3")
    admin.find_element(By.LINK_TEXT, "Download").click()
    target = os.path.join(DOWNLOADS, "photo-notes.txt")
    wait(admin, lambda d: os.path.exists(target) and os.path.getsize(target) == len(body), 60)
    with open(target, "rb") as f:
        check(f.read() == body, "the downloaded bytes are the uploaded bytes")

    # Create a branch from this view, change a file on it, compare.
    admin.get(BASE + "/-/b/docs/")
    wait(admin, EC.presence_of_element_located((By.ID, "new-branch")))
    admin.find_element(By.ID, "new-branch").send_keys("draft")
    admin.find_element(By.ID, "new-branch").submit()
    wait(admin, lambda d: "draft" in d.current_url)
    shot(admin, "branch")
    check(Select(admin.find_element(By.ID, "branch")).first_selected_option.text == "draft",
          "the new branch is open")
    changed = os.path.join(WORK, "readme.md")
    with open(changed, "w") as f:
        f.write("# Docs\n\nA second line, changed on draft.\n")
    submit_upload(admin, changed, "readme.md")
    check(Select(admin.find_element(By.ID, "compare")).first_selected_option.text == "main",
          "the compare picker offers main")
    admin.find_element(By.ID, "compare").submit()
    wait(admin, EC.presence_of_element_located((By.CSS_SELECTOR, "ul.changes")))
    shot(admin, "diff")
    text = admin.find_element(By.CSS_SELECTOR, "ul.changes").text
    check("modified" in text and "readme.md" in text, "the diff lists readme.md as modified")
    added = [e.text for e in admin.find_elements(By.CSS_SELECTOR, "pre.diff .add")]
    check(added == ["+A second line, changed on draft."], "the diff shows the line draft added: %r" % added)

    # History: the branch's log links each version's changes.
    admin.get(BASE + "/-/log/docs%40main")
    wait(admin, EC.presence_of_element_located((By.CSS_SELECTOR, "table.list")))
    shot(admin, "history")
    check("write" in admin.page_source and "changes" in admin.page_source, "the log lists commits with their changes")

    # A repository's log.
    admin.get(BASE + "/-/r/proj")
    wait(admin, EC.presence_of_element_located((By.TAG_NAME, "h1")))
    shot(admin, "repository")
    check("git clone " in admin.page_source, "the repository page shows clone URLs")
    admin.find_element(By.LINK_TEXT, "Commit log").click()
    wait(admin, EC.title_contains("log of"))
    shot(admin, "repository-log")
    check("Second commit" in admin.page_source and "First commit" in admin.page_source, "the repository log lists both commits")
    admin.find_elements(By.CSS_SELECTOR, "table.list a")[0].click()
    wait(admin, EC.presence_of_element_located((By.CSS_SELECTOR, "ul.changes")))
    shot(admin, "repository-commit")
    check("src/lib.rs" in admin.page_source, "a commit page lists its changed paths")

    # Share a file; open the link in a fresh browser with no token.
    admin.get(BASE + "/-/b/docs/photo-notes.txt")
    wait(admin, EC.presence_of_element_located((By.ID, "expires")))
    admin.find_element(By.ID, "expires").clear()
    admin.find_element(By.ID, "expires").send_keys("1d")
    admin.find_element(By.ID, "expires").submit()
    wait(admin, EC.presence_of_element_located((By.ID, "new-link")))
    shot(admin, "share-made")
    link = admin.find_element(By.ID, "new-link").get_attribute("value")
    check("/-/s/shr_" in link, "a share link was made")
except Exception as e:  # noqa: BLE001 - report where, then fail
    on_failure(admin, e)
finally:
    admin.quit()

guest = browser()
try:
    guest.get(link)
    wait(guest, EC.presence_of_element_located((By.CSS_SELECTOR, "pre.code")))
    shot(guest, "share-guest")
    check("notes from the browser" in guest.page_source, "a fresh browser opens the share link without a token")
    check("Sign out" not in guest.page_source, "the guest is not signed in")
    raw = guest.find_element(By.LINK_TEXT, "Open raw").get_attribute("href")
    got = urllib.request.urlopen(raw).read()
    check(got == body, "the share link serves the file's bytes")
    guest.get(BASE + "/-/b/docs/")
    wait(guest, EC.presence_of_element_located((By.ID, "token")))
    check("/-/login" in guest.current_url and "photo-notes" not in guest.page_source,
          "the share link opens nothing else: the bucket asks to sign in")
except Exception as e:  # noqa: BLE001 - report where, then fail
    on_failure(guest, e)
finally:
    guest.quit()

bob = browser()
try:
    sign_in(bob, BOB)
    bob.get(BASE + "/-/b/docs/")
    wait(bob, EC.presence_of_element_located((By.ID, "listing")))
    shot(bob, "read-user")
    check(not bob.find_elements(By.ID, "upload"), "a read user sees no upload form")
    # Sent anyway, with the session's own CSRF token: refused.
    csrf = bob.find_element(By.CSS_SELECTOR, "input[name=csrf]").get_attribute("value")
    cookie = bob.get_cookie("alknet_session")["value"]
    boundary = "alknetboundary"
    payload = ("--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"evil.txt\"\r\n\r\nno\r\n--%s--\r\n"
               % (boundary, boundary)).encode()
    req = urllib.request.Request(BASE + "/-/upload/docs?dir=/&csrf=" + csrf, data=payload, method="POST", headers={
        "Content-Type": "multipart/form-data; boundary=" + boundary, "Cookie": "alknet_session=" + cookie})
    try:
        urllib.request.urlopen(req)
        status = 200
    except urllib.error.HTTPError as e:
        status = e.code
    check(status == 403, "a read user's upload is refused (%d)" % status)
    bob.get(BASE + "/-/b/docs/")
    wait(bob, EC.presence_of_element_located((By.ID, "listing")))
    check("evil.txt" not in names(bob), "nothing was written")
except Exception as e:  # noqa: BLE001 - report where, then fail
    on_failure(bob, e)
finally:
    bob.quit()

# Reading works without JavaScript, on a phone-sized screen too.
plain = browser(size="390,844", javascript=False)
try:
    sign_in(plain, ADMIN)
    plain.get(BASE + "/-/b/docs/")
    wait(plain, EC.presence_of_element_located((By.ID, "listing")))
    check(not plain.execute_script("return document.documentElement.classList.contains('js')"),
          "the page's script is off")
    wide = plain.execute_script("return document.documentElement.scrollWidth > window.innerWidth + 1")
    shot(plain, "phone")
    check(not wide, "the listing fits a phone's width")
    # The branch picker's Go button, the way a page without scripts moves.
    Select(plain.find_element(By.ID, "branch")).select_by_visible_text("draft")
    plain.find_element(By.CSS_SELECTOR, "form[action='/-/go'] button").click()
    wait(plain, lambda d: "draft" in d.current_url)
    check("readme.md" in plain.page_source, "the branch picker works without JavaScript")
    plain.find_element(By.LINK_TEXT, "readme.md").click()
    wait(plain, EC.presence_of_element_located((By.CSS_SELECTOR, "pre.code")))
    check("changed on draft" in plain.find_element(By.CSS_SELECTOR, "pre.code").text,
          "a file opens and previews without JavaScript")
    shot(plain, "phone-file")
except Exception as e:  # noqa: BLE001 - report where, then fail
    on_failure(plain, e)
finally:
    plain.quit()

print(json.dumps({"screenshots": sorted(os.listdir(SHOTS))}))
