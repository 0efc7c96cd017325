"""Synthetic Japanese chat for tests and the benchmark: varied vocabulary, mixed scripts."""

from __future__ import annotations

import random
from collections.abc import Iterator

from context.tokens import count_tokens
from context.types import Message

_NAMES = ["田中", "佐藤", "鈴木", "高橋", "伊藤", "渡辺", "山本", "中村", "小林", "加藤",
          "吉田", "山田", "松本", "井上", "木村", "林", "清水", "山口", "森", "池田"]
_PLACES = ["渋谷", "新宿", "京都", "大阪", "札幌", "横浜", "鎌倉", "沖縄", "福岡", "名古屋",
           "上野", "秋葉原", "箱根", "奈良", "神戸", "金沢", "仙台", "広島"]
_FOODS = ["ラーメン", "カレー", "お寿司", "パスタ", "たこ焼き", "ケーキ", "焼き肉", "うどん",
          "オムライス", "餃子", "ピザ", "天ぷら", "抹茶アイス", "ハンバーガー", "そば"]
_THINGS = ["映画", "ゲーム", "漫画", "小説", "アニメ", "ドラマ", "音楽", "写真", "料理",
           "ギター", "ピアノ", "テニス", "サッカー", "ヨガ", "プログラミング", "英語"]
_LATIN = ["Python", "Netflix", "iPhone", "YouTube", "Switch", "Excel", "Slack", "GitHub",
          "Zoom", "Spotify", "Kindle", "AirPods"]
_KATA = "アイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモラリルレロ"
_KANJI = "山川田中村木林森本上下石井原松竹梅花鳥風月光明春夏秋冬海空雲雪星野"

_USER = [
    "今日は{place}で{food}を食べたよ",
    "{name}さんと{thing}の話をしたんだけど、すごく盛り上がった",
    "明日{time}に{place}に行く予定なんだ",
    "最近{thing}にはまってて、毎日{n}時間くらいやってる",
    "{name}さんの{event}、{month}月{day}日だったよね？",
    "{latin}の使い方がよくわからないんだけど教えて",
    "週末は{place}で{thing}でもしようかな",
    "{word}って知ってる？{name}さんに教えてもらったの",
    "ねえ、{food}と{food2}どっちが好き？",
    "仕事で{latin}を使うことになって大変だった",
    "{name}さんが{place}に引っ越すんだって",
    "{event}のプレゼント、{thing}関係のものがいいかな",
]
_ASSISTANT = [
    "へえ、いいなあ！{food}おいしかった？わたしも行きたいな",
    "{name}さん、元気そうでよかったね。{thing}の話、もっと聞かせて",
    "気をつけて行ってきてね、お兄ちゃん。{place}は{season}がきれいだよ",
    "すごいね！でも{n}時間もやりすぎじゃない？ちゃんと休んでね",
    "うーん、わたしの記憶だとそうだった気がする…確かめてみてね",
    "{latin}ならまず公式の説明を見るのがいいと思うよ。わからなかったら一緒に調べよ？",
    "{word}、はじめて聞いた！どんなものなの？",
    "わたしは{food}派かな。お兄ちゃんは？",
    "お疲れさま！{latin}って慣れるまで大変だよね",
]
_EVENTS = ["誕生日", "結婚式", "送別会", "発表会", "引っ越し", "記念日", "試験", "旅行"]
_SEASONS = ["春", "夏", "秋", "冬"]
_TIMES = ["朝", "昼", "夕方", "夜", "10時", "3時"]


class ChatGenerator:
    """Deterministic (seeded) stream of user/assistant messages with made-up words mixed in."""

    def __init__(self, seed: int = 7) -> None:
        self._rng = random.Random(seed)

    def _word(self) -> str:
        rng = self._rng
        if rng.random() < 0.5:
            return "".join(rng.choice(_KATA) for _ in range(rng.randint(3, 5)))
        return "".join(rng.choice(_KANJI) for _ in range(2)) + rng.choice(["館", "屋", "堂", "亭"])

    def _fill(self, template: str) -> str:
        rng = self._rng
        foods = rng.sample(_FOODS, 2)
        return template.format(
            name=rng.choice(_NAMES), place=rng.choice(_PLACES), food=foods[0], food2=foods[1],
            thing=rng.choice(_THINGS), latin=rng.choice(_LATIN), word=self._word(),
            event=rng.choice(_EVENTS), month=rng.randint(1, 12), day=rng.randint(1, 28),
            n=rng.randint(1, 9), time=rng.choice(_TIMES), season=rng.choice(_SEASONS),
        )

    def text(self, role: str) -> str:
        return self._fill(self._rng.choice(_USER if role == "user" else _ASSISTANT))

    def messages(self, count: int, *, first_seq: int = 1) -> Iterator[Message]:
        """`count` messages alternating user/assistant, seq first_seq, first_seq+1, ..."""
        for i in range(count):
            role = "user" if i % 2 == 0 else "assistant"
            yield make_message(first_seq + i, role, self.text(role))


def make_message(seq: int, role: str, text: str, *, tokens: int | None = None) -> Message:
    return Message(seq=seq, role=role, text=text,
                   tokens=count_tokens(text) if tokens is None else tokens,
                   created_at="2026-11-29T11:00:00.000Z", job_id=None)
