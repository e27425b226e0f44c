"The docs site: `kdnb docs` builds it, and headless Chromium (Debian's, installed here when missing) checks what a reader sees."
import functools, http.server, os, re, shutil, subprocess, threading
from pathlib import Path
import pytest
from conftest import ROOT, run_kdnb

CHROMIUM, CHROMEDRIVER = Path('/usr/bin/chromium'), Path('/usr/bin/chromedriver')
TUTORIAL = '32_dataset_inspection.ipynb'  # the tutorial executed here: a dozen seconds on a CPU

def ensure_chromium():
    "Install Debian's chromium and chromium-driver with apt when missing; nothing is downloaded from a browser vendor."
    if CHROMIUM.exists() and CHROMEDRIVER.exists(): return
    apt = ['apt-get'] if os.geteuid() == 0 else ['sudo', '-n', 'apt-get']
    if shutil.which('apt-get') is None: pytest.fail("Chromium is missing and there is no apt-get: install chromium and chromedriver (/usr/bin)")
    install = [*apt, 'install', '-y', '-q', 'chromium', 'chromium-driver']
    r = subprocess.run(install, capture_output=True, text=True)
    if r.returncode:  # a fresh machine may have no package lists yet
        subprocess.run([*apt, 'update', '-q'], capture_output=True, text=True)
        r = subprocess.run(install, capture_output=True, text=True)
    if r.returncode or not CHROMIUM.exists(): pytest.fail(f"installing chromium and chromium-driver failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")

@pytest.fixture(scope='module')
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp('site')/'_docs'
    r = run_kdnb('docs', '--out', out, '--execute', TUTORIAL, '--workers', '2', cwd=ROOT, timeout=1200)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    m = re.search(r'docs: (\d+) pages', r.stdout)
    assert m and int(m[1]) >= 25, r.stdout[-2000:]
    return out

@pytest.fixture(scope='module')
def browser(site):
    ensure_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_QuietHandler, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for a in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--window-size=1280,1000'): opts.add_argument(a)
    scratch = site.parent/'browser-tmp'; scratch.mkdir(exist_ok=True)  # Chromium's singleton folders, which it leaves behind, go with the test's
    driver = webdriver.Chrome(options=opts, service=Service(str(CHROMEDRIVER), env={**os.environ, 'TMPDIR': str(scratch)}))
    driver.base = f'http://127.0.0.1:{server.server_port}/'
    driver.shots = Path(os.environ.get('KDNB_SCREENSHOTS') or site.parent/'screenshots'); driver.shots.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit(); server.shutdown()

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args): pass

def _open(driver, page):
    from selenium.webdriver.support.ui import WebDriverWait
    driver.get(driver.base + page)
    WebDriverWait(driver, 20).until(lambda d: d.execute_script('return document.readyState') == 'complete')
    return driver.find_element('css selector', 'article')

def _wait(driver, script, what, timeout=30):
    from selenium.webdriver.support.ui import WebDriverWait
    try: return WebDriverWait(driver, timeout).until(lambda d: d.execute_script(script))
    except Exception: raise AssertionError(f"{what}: not seen within {timeout} s on {driver.current_url}") from None

def test_site_makes_no_outside_requests(site):
    "Everything the pages load (scripts, styles, fonts, MathJax) is part of the site."
    outside = {f.name: re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="(https?://[^"]+)"', f.read_text()) for f in site.glob('*.html')}
    assert not {k: v for k, v in outside.items() if v}

def test_search_index_holds_prose_not_code(site):
    "Search results show prose, headings, show_doc entries and outputs; code inputs and their copy buttons are left out."
    import json
    docs = json.loads((site/'search'/'search_index.json').read_text())['docs']
    text = ' '.join(d['title'] + ' ' + d['text'] for d in docs)
    assert 'test_eq(' not in text and 'In [' not in text and 'Out[' not in text  # code cells and their prompts
    assert any(d['location'].startswith('losses.html#kd_loss') for d in docs) and 'dark knowledge' in text

def test_index(browser):
    art = _open(browser, 'index.html')
    assert 'kdnb' in browser.title
    assert 'make test' in art.text and 'make docs' in art.text
    nav = browser.find_element('css selector', 'nav.md-nav--primary').get_attribute('textContent')
    for section in ('Tutorials', 'Library', 'Experiments at scale', 'Methods', 'Logit distillation', 'Benchmark', 'API index'): assert section in nav
    browser.save_screenshot(str(browser.shots/'index.png'))

def test_api_page_kd_loss(browser):
    art = _open(browser, 'losses.html')
    heads = [h.text for h in art.find_elements('css selector', 'h3')]
    assert 'kd_loss' in heads and 'at_loss' in heads, heads
    assert 'def kd_loss(' in art.text and 'T:float=4.0' in art.text  # show_doc's signature
    assert 'show_doc(' not in art.text  # the cells that produce it are hidden
    _wait(browser, "return document.querySelectorAll('.MathJax, .MathJax_CHTML, .MathJax_SVG').length > 0", 'formulas typeset by the bundled MathJax')
    browser.save_screenshot(str(browser.shots/'api_losses.png'))

def test_tutorial_with_figures(browser):
    art = _open(browser, 'dataset_inspection.html')
    assert 'augmented views' in art.text
    n = _wait(browser, "const ok = [...document.querySelectorAll('article img')].filter(i => i.complete && i.naturalWidth > 300);"
                       "return ok.length >= 4 && ok.length", 'at least 4 decoded figures')
    assert n >= 4
    browser.execute_script("document.querySelectorAll('article img')[1].scrollIntoView()")
    browser.save_screenshot(str(browser.shots/'tutorial_dataset_inspection.png'))

def test_search_finds_attention(browser):
    _open(browser, 'index.html')
    box = browser.find_element('css selector', 'input.md-search__input')
    box.click()
    box.send_keys('attention')
    _wait(browser, "return document.querySelectorAll('.md-search-result__item').length > 0", "search results for 'attention'")
    links = [a.get_attribute('href') for a in browser.find_elements('css selector', '.md-search-result__item a')]
    assert any('attention_maps.html' in l for l in links) and any('losses.html' in l for l in links), links
    browser.save_screenshot(str(browser.shots/'search_attention.png'))

QUARTO_STUB = '''#!/usr/bin/env python3
"Stands in for Quarto: logs its arguments; `render` writes an index listing the notebooks it was given."
import json, os, pathlib, sys
args = sys.argv[1:]
with open(os.environ['QUARTO_STUB_LOG'], 'a') as f: f.write(json.dumps([os.getcwd(), *args]) + '\\n')
if args[:1] == ['render']:
    out = pathlib.Path(args[args.index('--output-dir') + 1]); out.mkdir(parents=True, exist_ok=True)
    (out/'index.html').write_text('\\n'.join(sorted(p.name for p in pathlib.Path.cwd().glob('*.ipynb'))))
'''

def test_nbdev_docs_with_quarto(tmp_path):
    "`nbdev-docs` runs its whole pipeline on our config and notebooks, up to handing `_proc/` to Quarto (a stub here: Quarto cannot be installed)."
    import json, sys
    proj = tmp_path/'kdnb'
    for p in ('nbs', 'kdnb'): shutil.copytree(ROOT/p, proj/p, ignore=shutil.ignore_patterns('_quarto.yml', 'nbdev.yml', 'sidebar.yml', '__pycache__'))
    for p in ('pyproject.toml', 'README.md'): shutil.copy(ROOT/p, proj/p)
    (tmp_path/'bin').mkdir(); quarto = tmp_path/'bin'/'quarto'
    quarto.write_text(QUARTO_STUB); quarto.chmod(0o755)
    log = tmp_path/'quarto.log'
    env = {**os.environ, 'PATH': f"{tmp_path/'bin'}:{os.environ['PATH']}", 'QUARTO_STUB_LOG': str(log)}
    r = subprocess.run([str(Path(sys.executable).parent/'nbdev-docs'), '--n-workers', '1', '--file-glob', '08_losses.ipynb'],
                       cwd=proj, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    calls = [json.loads(l) for l in log.read_text().splitlines()]
    assert [c[1] for c in calls] == ['render'] and Path(calls[0][0]) == proj/'_proc', calls
    assert (proj/'_docs'/'index.html').read_text().split() == ['08_losses.ipynb']
    nbdev_yml = (proj/'nbs'/'nbdev.yml').read_text()
    assert 'output-dir: _docs' in nbdev_yml and 'title: "kdnb"' in nbdev_yml
    processed = (proj/'_proc'/'08_losses.ipynb').read_text()
    assert '### kd_loss' in processed and '### dist_loss' in processed  # show_doc entries added by nbdev
