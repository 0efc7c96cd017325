"""The recall benchmark's own conversations: long chats with planted facts, asked at the end.

Four conversations of `TURNS` exchanges each.  Facts are planted early (an updated fact:
the old version early, the new one later, both long before the end); everything else is
filler built to be hard:

* fillers reuse the facts' everyday words (歳, 誕生日, 鍵, 箱, 好き, 予約, park, car, keys,
  hotel, book, rent ...), so those words are common and weigh little;
* distractors say the same kind of thing about other people (ゆいちゃんは六歳, 田中さんの
  誕生日会, "I parked the bike at the station", "Tom's son plays soccer");
* the assistant's reply to a fact never repeats it ("覚えたよ！"), so only the fact itself
  counts as recalled.

Kinds: `anchored` (a name, incl. hiragana names, or an object, asked in other words around
it, e.g. 何歳 against 五歳), `english` (inflected: parked/park, lands/land), `paraphrase`
(no or almost no shared words: 生まれた日/誕生日, ネトフリ/Netflix, 車の点検/車検), `updated`
(the newer statement must be in the prompt).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field

TURNS = 300
CONVERSATIONS = 4


@dataclass(frozen=True)
class Fact:
    kind: str
    question: str
    # (turn, user text) in order; the last one is the one that must be recalled.
    statements: tuple[tuple[int, str], ...]

    @property
    def expected(self) -> str:
        return self.statements[-1][1]


@dataclass
class Conversation:
    name: str
    english_share: float
    facts: list[Fact] = field(default_factory=list)
    # The facts' names and objects again, in other contexts, scattered through the chat:
    # a question must find the one message that answers it, not any mention of its subject.
    mentions: list[str] = field(default_factory=list)


def _f(kind: str, question: str, *statements: tuple[int, str]) -> Fact:
    return Fact(kind=kind, question=question, statements=tuple(statements))


CONVERSATION_SET: list[Conversation] = [
    Conversation("family", 0.2, [
        _f("anchored", "ひまりって今何歳だっけ？", (6, "姪のひまりは先月で五歳になったんだ")),
        _f("anchored", "枡元さんの誕生日いつだっけ？", (9, "枡元さんの誕生日は3月12日だよ")),
        _f("anchored", "さくらちゃんの好きな花ってなんだっけ？",
           (14, "さくらちゃんはチューリップが一番好きなんだって")),
        _f("english", "where did I park my car?", (11, "I parked the car on level B3 of the mall garage")),
        _f("english", "when does my sister's flight land?",
           (17, "My sister's flight lands at 6:40 on Friday evening")),
        _f("english", "what lessons is Tom's daughter taking?",
           (21, "Tom's daughter started taking piano lessons on Tuesdays")),
        _f("paraphrase", "鈴木さんの生まれた日っていつ？", (25, "鈴木さんの誕生日は8月3日なんだ")),
        _f("paraphrase", "Netflixで毎晩何見てるって言ってたっけ？", (28, "最近ネトフリで毎晩韓国ドラマ見てる")),
        _f("updated", "会議って何曜日の何時だっけ？", (8, "会議は毎週火曜の10時からだよ"),
           (120, "会議、木曜の15時に変わったんだ")),
    ], [
        "ひまりと公園でブランコに乗ったよ", "ひまりがお絵かきを見せてくれた", "ひまりの保育園の先生、優しいんだって",
        "枡元さんと駅でばったり会った", "枡元さん、最近忙しそう", "さくらちゃんとケーキを作った",
        "さくらちゃん、ピアノの発表会だったんだって", "I took the car to the car wash",
        "my sister called me from the airport", "Tom's daughter drew a picture of our dog",
        "Tom's daughter is so tall now", "鈴木さんとランチ行った", "会議の資料を作らなきゃ",
        "会議で発表することになった", "Netflixの料金また上がるらしい",
    ]),
    Conversation("errands", 0.5, [
        _f("anchored", "自転車の鍵ってどこに置いたっけ？", (5, "自転車の鍵は玄関の青い箱に入れておいたよ")),
        _f("anchored", "パスポートどこにしまったっけ？", (12, "パスポートは本棚の二段目の引き出しにしまった")),
        _f("anchored", "会社の駐車場って何番だっけ？", (19, "会社の駐車場の番号は27番だよ")),
        _f("english", "where do I keep my spare key?",
           (7, "I'm keeping the spare keys in the kitchen drawer next to the forks")),
        _f("english", "how much is my landlord raising the rent?",
           (15, "My landlord is raising the rent to 1450 dollars in March")),
        _f("english", "what did the plumber fix?", (23, "The plumber fixed the leaking pipes under the bathroom sink")),
        _f("paraphrase", "車の点検っていつだったっけ？", (30, "車検は来月の10日に予約した")),
        _f("paraphrase", "what did the physician say about caffeine?",
           (33, "My doctor told me to cut down on coffee")),
        _f("updated", "銀行の暗証番号なんだっけ？", (10, "銀行の暗証番号は4821にした"),
           (140, "暗証番号、7356に変えたよ")),
    ], [
        "自転車のタイヤに空気入れた", "自転車で図書館まで行った", "青い箱にお菓子を入れておいた",
        "パスポートの写真、変な顔で写ってた", "パスポートの更新っていくらだっけ", "会社の駐車場、雪で真っ白だった",
        "the spare tire is in the trunk", "my keys are always in my pocket", "the landlord came to check the heater",
        "the plumber is coming again next week", "銀行のアプリが使いにくい", "車検って高いよね",
        "my doctor is on vacation this month",
    ]),
    Conversation("friends", 0.3, [
        _f("anchored", "ゆうとくんって何のクラブに入るんだっけ？",
           (8, "ゆうとくんは来月から小学校のサッカークラブに入るよ")),
        _f("anchored", "みおちゃんって何のアレルギーだっけ？", (13, "みおちゃんのアレルギーは卵とえびだよ")),
        _f("anchored", "モカのごはんって何時だっけ？", (18, "うちの猫のモカは毎朝7時にごはんを食べるよ")),
        _f("english", "which hotel did we book for the conference?",
           (6, "We booked two rooms at the Harbor Hotel for the conference")),
        _f("english", "how many spoons of sugar does grandma's recipe use?",
           (16, "Grandma's recipe uses three spoons of brown sugar")),
        _f("english", "what are Jenny's kids allergic to?", (24, "Jenny's kids are allergic to peanuts")),
        _f("paraphrase", "リモートワークっていつから？", (27, "来週から在宅勤務になるんだ")),
        _f("updated", "田中さんってどこに引っ越すんだっけ？", (11, "田中さんは大阪に引っ越すんだって"),
           (150, "田中さん、大阪じゃなくて福岡に引っ越すことになったって")),
        _f("updated", "when is my dentist appointment?", (15, "My dentist appointment is on Monday at 9"),
           (130, "I moved my dentist appointment to Thursday at 2")),
    ], [
        "ゆうとくんが泣いてた", "ゆうとくん、背が伸びたね", "みおちゃんとプールに行った",
        "みおちゃんのお母さんから電話があった", "モカが窓の外をずっと見てる", "モカがまた太った気がする",
        "the conference was so boring", "the hotel had a nice pool", "grandma called this morning",
        "grandma's garden is beautiful", "Jenny's kids are so loud", "田中さんからお土産もらった",
        "田中さん、最近元気ない", "the dentist gave me a new toothbrush",
    ]),
    Conversation("work", 0.5, [
        _f("anchored", "歯医者の予約っていつだっけ？", (7, "歯医者の予約は11月20日の午後4時")),
        _f("anchored", "母の日のプレゼント何にしたんだっけ？",
           (12, "母の日のプレゼントはカーネーションと紅茶のセットにした")),
        _f("anchored", "Wi-Fiのパスワードどこに書いてあったっけ？",
           (20, "Wi-Fiのパスワードは冷蔵庫に貼ってあるメモに書いてある")),
        _f("english", "when is the marathon I'm running?", (9, "I'm running the Osaka half marathon on November 9")),
        _f("english", "where did I lose my wallet?", (14, "I lost my wallet at the gym yesterday")),
        _f("english", "what was the history book I've been reading?",
           (22, "I was reading a book about Roman history called SPQR")),
        _f("paraphrase", "アルバイトのボスが辞めるのっていつ？", (26, "バイト先の店長が来月やめるらしい")),
        _f("updated", "ジムの会費っていくらだっけ？", (10, "ジムの会費は月8000円"),
           (125, "ジムの会費、来月から9500円に値上がりするって")),
        _f("updated", "where is the team dinner?", (16, "The team dinner is at the Italian place on 5th street"),
           (160, "The team dinner moved to the sushi bar near the office")),
    ], [
        "歯医者って苦手なんだよね", "母の日にお母さんに電話した", "Wi-Fiが遅くてイライラする",
        "Wi-Fiのルーター買い替えようかな", "the marathon on TV was exciting", "I bought a new wallet online",
        "I'm reading a comic about history", "ジムで筋肉痛になった", "ジムのシャワーが壊れてた",
        "the team dinner was fun last time", "the Italian place closed early", "バイトの面接に行った",
    ]),
]

# Fillers that reuse the facts' words, about other people and other things.
_JA_FILLERS = [
    "{kid}ちゃんは{n}歳になったんだって", "{kid}くんって何歳だったかな、忘れちゃった",
    "{name}さんの誕生日会、楽しかったね", "{name}さんの誕生日プレゼント何がいいと思う？",
    "車の鍵を会社に忘れてきちゃった", "{name}さんは鍵をいつも玄関に置きっぱなしなんだって",
    "引き出しの中の箱を片付けた", "青い傘を駅に忘れた", "本棚を買い替えたいな",
    "{kid}ちゃんはひまわりの絵を描いてた", "桜が咲いたら{place}に行こうよ", "好きな花は何？って聞かれた",
    "駐車場がいっぱいで困った", "{name}さんの車、新しくなってた", "会議が長引いてお昼食べそびれた",
    "{name}さんの会議の資料、まだ届かない", "暗証番号を忘れて{name}さんが困ってた",
    "{name}さんは{place}に住んでるんだって", "{place}への引っ越し、大変そう",
    "予約した店、{place}にあるんだ", "{name}さんが歯医者に行くって言ってた",
    "ジムに行くのさぼっちゃった", "パスワードを変えなさいってメールが来た",
    "{kid}くんはサッカーが好きなんだって", "猫がごはんを食べないんだけど大丈夫かな",
    "{name}さんのところの犬、毎朝{n}時に散歩してるらしい", "アレルギーで目がかゆい",
    "プレゼントのラッピングに時間かかった", "卵焼きうまく作れた！", "紅茶とコーヒーどっちにする？",
    "ドラマの続きが気になる", "{name}さんのお店の店長、優しいよね", "来月から忙しくなりそう",
    "小学校の運動会、{month}月{day}日だって", "{kid}ちゃんが{n}時にお昼寝してた",
]
_JA_REPLIES = [
    "へえ、そうなんだ！", "覚えておくね", "ふふ、お兄ちゃんらしいね", "それは大変だったね…",
    "いいなあ、わたしも行きたい！", "なるほどね〜", "えっ、ほんとに？", "今度くわしく教えてね",
]
_EN_FILLERS = [
    "I parked the bike at the station today", "the car park at the mall was full again",
    "my brother's flight was delayed by two hours", "{en}'s son plays soccer on Saturdays",
    "the hotel breakfast was great last time", "I read a book about cats on the train",
    "rent prices around here are crazy", "I cleaned the kitchen sink this morning",
    "these sugar-free cookies taste weird", "{en} lost her keys at work again",
    "we watched a movie about a marathon runner", "my wallet is falling apart",
    "{en} is learning the guitar", "the plumber's van was parked outside all day",
    "{en}'s kids love the swimming lessons", "the dentist down the street closed",
    "I booked a table for {en}'s birthday", "the team lunch was fun", "{en} moved to a new office",
    "the recipe book I bought has too many pictures", "my landlord finally fixed the heater",
    "the history museum is free on Sundays", "I keep forgetting where I put my glasses",
    "{en} is allergic to cats", "the conference room was freezing", "I'm running late today",
]
_EN_REPLIES = [
    "oh really? tell me more!", "haha, that sounds like you", "got it!", "that's annoying…",
    "nice, I'm jealous", "hmm, I see", "take care, ok?",
]
_FACT_REPLIES = ["覚えたよ！", "うん、覚えておくね！", "Got it, I'll remember!", "了解！"]
_KIDS = ["ゆい", "りこ", "ひな", "めい", "そうた", "はるか", "あおい", "ことね"]
_NAMES = ["田中", "佐藤", "高橋", "伊藤", "山本", "中村", "小林", "加藤"]
_EN_NAMES = ["Mike", "Lisa", "Ken", "Emma", "Jack", "Sara"]
_PLACES = ["京都", "大阪", "横浜", "札幌", "神戸", "福岡", "渋谷", "鎌倉"]


class FillerChat:
    """Seeded stream of filler exchanges (user text, assistant text)."""

    def __init__(self, *, seed: int, english_share: float) -> None:
        self._rng = random.Random(seed)
        self._english_share = english_share

    def _fill(self, template: str) -> str:
        rng = self._rng
        return template.format(kid=rng.choice(_KIDS), name=rng.choice(_NAMES), en=rng.choice(_EN_NAMES),
                               place=rng.choice(_PLACES), n=rng.randint(2, 9),
                               month=rng.randint(1, 12), day=rng.randint(1, 28))

    def exchange(self) -> tuple[str, str]:
        if self._rng.random() < self._english_share:
            return self._fill(self._rng.choice(_EN_FILLERS)), self._rng.choice(_EN_REPLIES)
        return self._fill(self._rng.choice(_JA_FILLERS)), self._rng.choice(_JA_REPLIES)


def exchanges(conversation: Conversation, *, seed: int) -> Iterator[tuple[str, str]]:
    """TURNS exchanges: the planted statements at their turns, fillers elsewhere."""
    planted = {turn: text for fact in conversation.facts for turn, text in fact.statements}
    chat = FillerChat(seed=seed, english_share=conversation.english_share)
    rng = random.Random(seed + 1)
    free = [t for t in range(1, TURNS - 3) if t not in planted]
    # Each mention twice, anywhere before the recent window (some after the fact).
    for text in conversation.mentions * 2:
        turn = rng.choice(free)
        free.remove(turn)
        planted[turn] = text
    for turn in range(1, TURNS + 1):
        if turn in planted:
            yield planted[turn], rng.choice(_FACT_REPLIES)
        else:
            yield chat.exchange()
