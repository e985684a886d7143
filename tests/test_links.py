"""UTM tagging of body links: every http(s) link gets the step's utm_* tags, unless it has its
own utm_* parameters or is one of Nurture's signed recipient pages."""
from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from nurture.rendering.links import tag_html, tag_text, utm_query

Q = utm_query("email", "cart_abandonment", "reminder")
OWN = ("https://shop.example/u/", "https://shop.example/confirm/")


def test_query_names_source_medium_campaign_and_step():
    assert parse_qs(Q) == {"utm_source": ["nurture"], "utm_medium": ["email"],
                           "utm_campaign": ["cart_abandonment"], "utm_content": ["reminder"]}


@pytest.mark.parametrize("href, expected", [
    ("https://shop.example/cart", "https://shop.example/cart?" + Q.replace("&", "&amp;")),
    ("https://shop.example/cart?x=1&amp;y=2", "https://shop.example/cart?x=1&amp;y=2&amp;" + Q.replace("&", "&amp;")),
    ("https://shop.example/p#reviews", "https://shop.example/p?" + Q.replace("&", "&amp;") + "#reviews"),
    ("https://shop.example/p?utm_source=partner", "https://shop.example/p?utm_source=partner"),
    ("https://shop.example/p?a=1&amp;utm_campaign=x", "https://shop.example/p?a=1&amp;utm_campaign=x"),
    ("https://shop.example/u/abc.def", "https://shop.example/u/abc.def"),
    ("https://shop.example/confirm/abc.def", "https://shop.example/confirm/abc.def"),
])
def test_html_href_is_tagged_unless_own_utm_or_recipient_page(href, expected):
    html = f'<p><a class="button" href="{href}">go</a></p>'
    assert tag_html(html, Q, OWN) == f'<p><a class="button" href="{expected}">go</a></p>'


def test_mailto_tel_and_anchors_are_left_alone():
    html = '<a href="mailto:help@shop.example">mail</a><a href="tel:+4930123">call</a><a href="#top">top</a>'
    assert tag_html(html, Q, OWN) == html


def test_every_link_of_a_body_is_tagged_in_one_pass():
    html = "".join(f"<a href='https://shop.example/{i}'>{i}</a>" for i in range(5))
    tagged = tag_html(html, Q, OWN)
    assert tagged.count("utm_content=reminder") == 5
    assert "https://shop.example/3?utm_source=nurture" in tagged


def test_plain_text_urls_are_tagged_and_sentence_punctuation_stays_outside():
    text = "Your cart: https://shop.example/cart. Questions? https://shop.example/help?lang=de, or reply."
    tagged = tag_text(text, utm_query("sms", "cart", "nudge"), OWN)
    first = tagged.split(" ")[2]
    assert first.endswith(".") and not first.endswith("..")
    url = first[:-1]
    assert parse_qs(urlsplit(url).query)["utm_medium"] == ["sms"]
    assert "https://shop.example/help?lang=de&utm_source=nurture&utm_medium=sms&utm_campaign=cart&utm_content=nudge," in tagged


def test_text_part_link_in_parentheses_is_tagged_without_the_parenthesis():
    text = "Back to your cart (https://shop.example/cart)\nUnsubscribe (https://shop.example/u/tok.sig)"
    tagged = tag_text(text, Q, OWN)
    assert "(https://shop.example/cart?utm_source=nurture&" in tagged and tagged.split("\n")[0].endswith("reminder)")
    assert "(https://shop.example/u/tok.sig)" in tagged


@pytest.mark.parametrize("url", ["HTTPS://shop.example/a", "httpS://shop.example/a", "Http://shop.example/a",
                                 "https://shop.example/a"])
def test_plain_text_urls_are_tagged_whatever_the_case_of_their_scheme(url):
    tagged = tag_text(f"Look: {url} and https://shop.example/b.", Q, OWN)
    assert f"{url}?utm_source=nurture" in tagged and "https://shop.example/b?utm_source=nurture" in tagged
    assert tagged.count("utm_content=reminder") == 2


def test_step_ids_with_special_characters_are_percent_encoded():
    assert "utm_content=a%26b%20c" in utm_query("email", "j", "a&b c")


def test_href_spelled_in_capitals_is_tagged_like_lower_case():
    html = '<A HREF="https://shop.example/a">a</A><a Href="HTTPS://shop.example/b">b</a><a href="https://shop.example/c">c</a>'
    tagged = tag_html(html, Q, OWN)
    assert tagged.count("utm_content=reminder") == 3
    assert 'HREF="https://shop.example/a?utm_source=nurture' in tagged


def test_only_an_href_attribute_is_tagged_not_a_longer_name_ending_in_href():
    html = '<a xhref="https://shop.example/a">a</a><a data-href="https://shop.example/b">b</a>'
    tagged = tag_html(html, Q, OWN)
    assert 'xhref="https://shop.example/a"' in tagged
    assert 'data-href="https://shop.example/b?utm_source=nurture' in tagged


def test_the_same_link_in_many_bodies_is_tagged_identically_each_time():
    bodies = [f'<a href="https://shop.example/sale">{i}</a><a href="https://shop.example/u/tok{i}">x</a>' for i in range(3)]
    tagged = [tag_html(b, Q, OWN) for b in bodies]
    assert all(t.count("utm_content=reminder") == 1 and f"/u/tok{i}\"" in t for i, t in enumerate(tagged))


@pytest.mark.parametrize("anchor", [
    '<a href="{{ links.home }}/sale">Shop now</a>',
    "<a href='{{ links.home }}/sale'>Shop now</a>",
    "<a href={{ links.home }}/sale>Shop now</a>",
    '<a data-href="https://elsewhere.example" class="button" HREF = \'{{ links.home }}/sale\'>Shop now</a>',
])
def test_the_derived_text_part_keeps_a_link_whatever_its_href_quoting_and_tagging_reaches_it(tmp_path, anchor):
    from nurture.rendering.templates import TemplateLibrary
    (tmp_path / "templates" / "email").mkdir(parents=True)
    (tmp_path / "templates" / "email" / "t.html").write_text(f"<p>Autumn sale: {anchor}</p>", encoding="utf-8")
    rendered = TemplateLibrary(tmp_path / "templates").render_email(
        "t", "x", {"contact": {"locale": "en"}, "links": {"home": "https://shop.example"}})
    assert rendered.text == "Autumn sale: Shop now (https://shop.example/sale)\n"
    assert tag_text(rendered.text, Q, OWN) == f"Autumn sale: Shop now (https://shop.example/sale?{Q})\n"
