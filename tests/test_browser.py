"""JupyterLab and the rendered notebooks in a real browser: Chromium driven by Selenium.

One JupyterLab server, started as `make lab` starts it (jupyter lab, --no-browser) on a free port of
127.0.0.1 with a token, serves copies of the notebooks whose parameters cell says `profile = "smoke"`;
GEN_LIB_BUILD and GEN_LIB_REPORT point at a temporary folder, so nothing under build/ or report/ is
touched. In the browser:

* 02_flow and 05_explore are executed through the UI (the "Run All" command of the notebook panel):
  no cell may fail, every figure must render (<img> elements that loaded), the widgets of 05_explore
  must render, and typing a value into a slider's readout must redraw the explorer's image (a round
  trip through the kernel);
* 01_priors, 03_ddpm and 04_quality are opened (rendered, kernel started), not executed: running them
  all would take several minutes. 05_explore needs the caches of 01 and 03, so the test trains those
  two models first exactly as the notebooks do, on the smoke configuration (seconds); 02_flow, run
  first, caches the flow itself.
* the grader's pages (gen_lib.report.site) of the two executed notebooks, at 1280 px: the index and a report
  view, with real tables, loaded images, no code and no horizontal scrolling.

Screenshots go to build/screenshots/ (GEN_LIB_BUILD moves build/). The browser is Debian's chromium
and chromium-driver (`make browser`); without them the test skips, but only where they cannot be
installed (not root).
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gen_lib import paths

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
EXECUTED = ("02_flow", "05_explore")  # run through the UI, in this order (05 reads 02's flow)
OPENED = ("01_priors", "03_ddpm", "04_quality")
WIDTH = 1280


def _browser() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    if os.geteuid() == 0:
        pytest.fail("Chromium is missing but could be installed: run `make browser` "
                    "(apt-get install chromium chromium-driver)")
    pytest.skip("no browser: Debian's chromium and chromium-driver are not installed and this user is not root "
                "to install them (as root: make browser)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _smoke_copy(name: str, folder: Path) -> None:
    """The notebook with `profile = "smoke"` in its parameters cell."""
    nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
    params = next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))
    source = "".join(params["source"])
    assert 'profile = "default"' in source, f"{name}: parameters cell without profile = \"default\""
    params["source"] = source.replace('profile = "default"', 'profile = "smoke"')
    (folder / f"{name}.ipynb").write_text(json.dumps(nb, indent=1))


def _train_caches_for_explore() -> None:
    """Seed 0 of every prior (01_priors) and the DDPM (03_ddpm), trained by the recipes those notebooks call."""
    from gen_lib.study import config, recipes
    from gen_lib import data, priors

    cfg = config.resolve("priors", "smoke")
    train_x, _ = data.load_mnist("train")
    train_b = data.binarize(train_x[:cfg["train_subset"]])
    for name in priors.names():
        recipes.train_vae(cfg, train_b, prior=name, seed=0, progress=False)
    recipes.train_ddpm(config.resolve("ddpm", "smoke"), train_x, progress=False)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on the smoke copies of the notebooks: (url, token, folder)."""
    root = tmp_path_factory.mktemp("lab")
    nbdir = root / "notebooks"
    nbdir.mkdir()
    for name in EXECUTED + OPENED:
        _smoke_copy(name, nbdir)
    settings = root / "settings" / "@jupyterlab"
    for plugin, values in (("notebook-extension/tracker", {"windowingMode": "none",  # every cell in the DOM
                                                           "kernelShutdown": True,  # closing a tab ends its kernel
                                                           "recordTiming": True}),  # cell timings in the saved .ipynb
                           ("apputils-extension/notification", {"fetchNews": "false", "checkForUpdates": False})):
        (settings / plugin).parent.mkdir(parents=True, exist_ok=True)
        (settings / f"{plugin}.jupyterlab-settings").write_text(json.dumps(values))
    env = {**os.environ, "GEN_LIB_BUILD": str(root / "build"), "GEN_LIB_REPORT": str(root / "report"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
           "JUPYTER_CONFIG_DIR": str(root / "config"), "JUPYTER_RUNTIME_DIR": str(root / "runtime"),
           "JUPYTERLAB_SETTINGS_DIR": str(root / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(root / "workspaces"),
           # the kernel shares the cores with Chromium and pytest: one thread (spinning OpenMP threads on busy
           # cores made 05_explore's DDPM cell 50 times slower here, 69 s instead of 1.3 s)
           "OMP_NUM_THREADS": "1"}
    port, token = _free_port(), secrets.token_hex(16)
    jupyter = Path(sys.executable).with_name("jupyter")
    cmd = [str(jupyter) if jupyter.exists() else sys.executable, *([] if jupyter.exists() else ["-m", "jupyter"]),
           "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={nbdir}", "--LabApp.expose_app_in_browser=True",
           "--LabApp.news_url=None", *(["--allow-root"] if os.geteuid() == 0 else [])]
    log = open(root / "server.log", "w")
    server = subprocess.Popen(cmd, cwd=nbdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # the models 05_explore needs from 01 and 03, while the server starts
        saved = {k: os.environ.get(k) for k in ("GEN_LIB_BUILD", "GEN_LIB_REPORT")}
        os.environ.update(GEN_LIB_BUILD=env["GEN_LIB_BUILD"], GEN_LIB_REPORT=env["GEN_LIB_REPORT"])
        t0 = time.perf_counter()
        try:
            _train_caches_for_explore()
            print(f"[browser test] caches for 05_explore trained in {time.perf_counter() - t0:.1f} s", flush=True)
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                pytest.fail(f"jupyter lab did not start: {(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        print(f"[browser test] JupyterLab up after {time.perf_counter() - t0:.1f} s", flush=True)
        yield url, token, root
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver_path = _browser()
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--hide-scrollbars",
                f"--window-size={WIDTH},1000", f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_script_timeout(120)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots():
    folder = paths.build_dir() / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("lab_*.png"), *folder.glob("site_*.png")]:  # this test's, from an earlier run
        old.unlink(missing_ok=True)  # another run of this test may have removed it
    return folder


def _wait(predicate, timeout: float, what: str, poll: float = 0.5):
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


_OPEN = """
const [path, done] = arguments;
const app = window.jupyterapp;
for (const w of app.shell.widgets('main')) {  // JupyterLab marks opened notebooks dirty (cell ids): close unsaved
  if (w.context && w.context.model) w.context.model.dirty = false;
}
app.commands.execute('application:close-all')
  .then(() => app.commands.execute('docmanager:open', {path}))
  .then(async panel => { await panel.context.ready; await panel.sessionContext.ready; done('ok'); })
  .catch(e => done(String(e)));
"""

_STATE = """
const panel = window.jupyterapp.shell.currentWidget;
const cells = panel.content.widgets;
const code = cells.filter(c => c.model.type === 'code');
const errors = [];
code.forEach((c, i) => c.model.outputs.toJSON().forEach(o => {
  if (o.output_type === 'error') errors.push(`code cell ${i}: ${o.ename}: ${o.evalue}`); }));
const imgs = [...panel.content.node.querySelectorAll('.jp-OutputArea-output img')];
return {kernel: panel.sessionContext.session && panel.sessionContext.session.kernel
                ? panel.sessionContext.session.kernel.status : null,
        cells: cells.length, markdown: panel.content.node.querySelectorAll('.jp-MarkdownOutput h1, .jp-MarkdownOutput h2').length,
        executed: code.filter(c => c.model.executionCount !== null).length, code: code.length,
        running: code.filter(c => c.promptNode && c.promptNode.textContent.includes('*')).length,
        done: window.__runDone === undefined ? null : window.__runDone, errors,
        images: imgs.length, loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
        widgets: panel.content.node.querySelectorAll('.jupyter-widgets.widget-slider, .widget-slider').length};
"""


def _open(driver, url: str, token: str, name: str) -> dict:
    if not driver.execute_script("return !!window.jupyterapp"):
        driver.get(f"{url}/lab?reset&token={token}")
        _wait(lambda: driver.execute_script("return !!(window.jupyterapp && window.jupyterapp.shell)"), 60,
              "JupyterLab to load")
        driver.execute_async_script("window.jupyterapp.restored.then(() => arguments[0]())")  # layout restored
    assert driver.execute_async_script(_OPEN, f"{name}.ipynb") == "ok"
    return _wait(lambda: (s := driver.execute_script(_STATE)) and s["kernel"] == "idle" and s, 90,
                 f"{name} to open with an idle kernel")


def _screenshot_cell(driver, folder: Path, name: str, index: int) -> Path:
    """Scroll cell `index` (among all cells) to the top of the notebook panel and take a screenshot."""
    driver.execute_script("const p = window.jupyterapp.shell.currentWidget;"
                          "p.content.widgets[arguments[0]].node.scrollIntoView({block: 'start'});", index)
    time.sleep(0.6)
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def _cell_index(driver, text: str) -> int:
    return driver.execute_script("return window.jupyterapp.shell.currentWidget.content.widgets"
                                 ".findIndex(c => c.model.sharedModel.getSource().includes(arguments[0]))", text)


def test_jupyterlab_runs_the_notebooks_and_the_grader_pages_read_well(lab, browser, shots):
    url, token, root = lab
    t_start = time.perf_counter()
    seconds = {}
    mark = lambda what: print(f"[browser test] {time.perf_counter() - t_start:6.1f} s  {what}", flush=True)

    # ---- executed through the UI: no failed cell, figures and widgets render
    for name in EXECUTED:
        _open(browser, url, token, name)
        browser.execute_script("window.__runDone = undefined; window.jupyterapp.commands.execute("
                               "'notebook:run-all-cells').then(r => window.__runDone = r, e => window.__runDone = String(e));")
        t0 = time.perf_counter()
        state = _wait(lambda: (s := browser.execute_script(_STATE)) and (s["errors"] or (
            s["done"] is not None and s["kernel"] == "idle" and s["running"] == 0)) and s, 300,
            f"{name} to run through JupyterLab")
        seconds[name] = time.perf_counter() - t0
        mark(f"{name} executed")
        assert not state["errors"], f"{name} failed in JupyterLab: {state['errors']}"
        assert state["executed"] == state["code"], f"{name}: {state['executed']} of {state['code']} code cells ran"
        state = _wait(lambda: (s := browser.execute_script(_STATE))["loaded"] == s["images"] and s, 30,
                      f"{name}'s images to load")
        assert state["images"] >= 3, f"{name}: only {state['images']} figures rendered"
        assert browser.execute_async_script(
            "window.jupyterapp.commands.execute('docmanager:save').then(() => arguments[0]('ok'), "
            "e => arguments[0](String(e)))") == "ok"
        saved = json.loads((root / "notebooks" / f"{name}.ipynb").read_text())
        assert not [o for c in saved["cells"] if c["cell_type"] == "code" for o in c["outputs"]
                    if o["output_type"] == "error"]
        if name == "02_flow":
            _screenshot_cell(browser, shots, "lab_02_flow", _cell_index(browser, '"flow_samples"') - 1)
        else:
            assert state["widgets"] >= 5, f"the explorers' sliders did not render ({state['widgets']})"
            for part, text in (("latent", "latent.widget"), ("ddpm", "diffusion.widget"), ("flow", "flow_view.widget")):
                _screenshot_cell(browser, shots, f"lab_05_explore_{part}", _cell_index(browser, text))
            _drive_latent_slider(browser, shots)
        mark(f"{name} checked")

    # ---- opened, not executed (their caches would take minutes to build)
    for name in OPENED:
        state = _open(browser, url, token, name)
        assert state["cells"] > 10 and state["markdown"] >= 3, f"{name} did not render: {state}"
        _screenshot_cell(browser, shots, f"lab_{name}", 0)
        mark(f"{name} opened")

    # ---- the grader's pages of the executed notebooks at 1280 px
    _grader_pages(browser, root, seconds, shots)
    print(f"browser test: {time.perf_counter() - t_start:.0f} s in the browser; UI execution "
          + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + f"; screenshots in {shots}")


def _drive_latent_slider(driver, shots: Path) -> None:
    """Type a new z₁ into the latent explorer's slider readout: the kernel redraws its image."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    index = _cell_index(driver, "latent.widget")
    cell = driver.execute_script("return window.jupyterapp.shell.currentWidget.content.widgets[arguments[0]].node",
                                 index)
    image = cell.find_element(By.CSS_SELECTOR, ".jp-OutputArea-output img")
    label = cell.find_element(By.CSS_SELECTOR, ".widget-html-content")
    before_src, before_text = image.get_attribute("src"), label.text
    readout = cell.find_elements(By.CSS_SELECTOR, ".widget-readout")[0]
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].focus();"
                          "document.execCommand('selectAll', false, null);", readout)
    readout.send_keys("0.25", Keys.ENTER)  # the widget clips it into the prior's box
    _wait(lambda: image.get_attribute("src") != before_src and label.text != before_text, 60,
          "the latent explorer to redraw after its slider moved")
    assert f"z = ({readout.text}," in label.text, (readout.text, label.text)  # the kernel saw the new z₁
    _screenshot_cell(driver, shots, "lab_05_explore_latent_moved", index)


def _grader_pages(driver, root: Path, seconds: dict, shots: Path) -> None:
    import nbformat
    from nbconvert import HTMLExporter

    from gen_lib import report
    from gen_lib.report import site

    build = root / "build"
    out = build / "notebooks"
    out.mkdir(parents=True, exist_ok=True)
    saved = os.environ.get("GEN_LIB_BUILD")
    os.environ["GEN_LIB_BUILD"] = str(build)
    try:
        for name in EXECUTED:  # what gen_lib.run.execute writes, from the notebooks JupyterLab saved
            shutil.copy2(root / "notebooks" / f"{name}.ipynb", out / f"{name}.ipynb")
            body, _ = HTMLExporter().from_notebook_node(nbformat.read(out / f"{name}.ipynb", as_version=4))
            (out / f"{name}.html").write_text(body, encoding="utf-8")
            site.write_report_view(out / f"{name}.ipynb")
        index = site.write_index("smoke", "mnist", {k: {"seconds": v, "hardware": report.hardware()}
                                                    for k, v in seconds.items()})
    finally:
        os.environ.pop("GEN_LIB_BUILD") if saved is None else os.environ.__setitem__("GEN_LIB_BUILD", saved)

    def full_page(url: str, shot: str, max_height: int = 7000) -> dict:
        driver.set_window_size(WIDTH, 1000)
        driver.get(url)
        _wait(lambda: driver.execute_script("return document.readyState") == "complete", 30, url)
        info = driver.execute_script("""
            const imgs = [...document.images];
            return {width: window.innerWidth, scroll: document.documentElement.scrollWidth,
                    height: document.documentElement.scrollHeight, tables: document.querySelectorAll('table').length,
                    images: imgs.length, loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
                    inputs: document.querySelectorAll('.jp-CodeCell .jp-InputArea, .jp-InputArea-editor').length,
                    links: [...document.links].map(a => a.getAttribute('href'))};""")
        driver.set_window_size(WIDTH, min(info["height"] + 120, max_height))
        time.sleep(0.5)
        driver.save_screenshot(str(shots / shot))
        return info

    page = full_page(index.as_uri(), "site_index.png")
    assert page["width"] == WIDTH and page["scroll"] <= WIDTH, f"the index scrolls sideways at {WIDTH} px: {page}"
    for name in EXECUTED:
        assert f"notebooks/{name}.report.html" in page["links"] and f"notebooks/{name}.html" in page["links"]
    for name in EXECUTED:
        view = full_page((out / f"{name}.report.html").as_uri(), f"site_{name}_report.png")
        assert view["inputs"] == 0, f"{name}: the report view shows code"
        assert view["images"] >= 3 and view["loaded"] == view["images"], f"{name}: figures missing: {view}"
        assert view["scroll"] <= WIDTH, f"{name}: the report view scrolls sideways at {WIDTH} px"
        assert name != "02_flow" or view["tables"] >= 2, "02_flow's report view lost its tables"
    driver.set_window_size(WIDTH, 1000)
