"""Words that say how something is asked, not what about: left out of the index.

English: the Snowball project's English stop word list (snowballstem.org, BSD licence),
folded to lower case without apostrophes, the way the tokenizer sees words.
Japanese: Sudachi parts of speech that carry no topic, and the normalized forms of a few
very common function-like words (する, なる, いる, こと ...) and honorifics.
"""

from __future__ import annotations

_ENGLISH = """
a about above after again against all am an and any are aren as at be because been before
being below between both but by can cannot could couldn did didn do does doesn doing don
down during each few for from further had hadn has hasn have haven having he her here hers
herself him himself his how i if in into is isn it its itself let me more most my
myself no nor not of off on once only or other ought our ours ourselves out over own same
shan she should shouldn so some such than that the their theirs them themselves then there
these they this those through to too under until up very was wasn we were weren what when
where which while who whom why with would wouldn you your yours yourself yourselves
ll re ve
"""
ENGLISH_STOP_WORDS = frozenset(_ENGLISH.split())

# 助詞 particles, 助動詞 auxiliaries, 補助記号/記号/空白 symbols, 代名詞 pronouns (私, これ,
# どこ, いつ), 接続詞 conjunctions, 感動詞 interjections, 連体詞 (この, その).
JAPANESE_STOP_POS = frozenset({
    "助詞", "助動詞", "補助記号", "記号", "空白", "代名詞", "接続詞", "感動詞", "連体詞",
})

JAPANESE_STOP_FORMS = frozenset({
    "為る", "する", "成る", "なる", "有る", "ある", "居る", "いる", "言う", "事", "こと", "物", "もの",
    "様", "よう", "為", "ため", "所", "ところ", "無い", "ない", "其の", "此の", "さん", "ちゃん",
    "くん", "君", "氏", "殿", "たち", "達", "等", "頃", "ころ", "ぐらい", "くらい", "何", "なに",
})
