"""Words for the simulated corp: people, organisations and bilingual finance chat.

Everything is fictional. The text mixes Chinese and English the way a Shanghai or
Hong Kong wealth-management desk writes, with WeCom's ``[微笑]`` emoticon codes and
Unicode emoji including ZWJ sequences, so search, export and rendering are exercised
with what real archives contain (cases X1, X3).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# (name, english_name, userid) — a few userids are digits, as WeCom allows
EMPLOYEES: list[tuple[str, str, str]] = [
    ("王小明", "Xiaoming Wang", "WangXiaoMing"),
    ("徐金生", "Jinsheng Xu", "XuJinSheng"),
    ("李娜", "Na Li", "lina"),
    ("张伟", "Wei Zhang", "zhangwei"),
    ("刘洋", "Yang Liu", "liuyang"),
    ("陈静", "Jing Chen", "chenjing"),
    ("杨帆", "Fan Yang", "yangfan"),
    ("赵磊", "Lei Zhao", "zhaolei"),
    ("黄敏", "Min Huang", "huangmin"),
    ("周杰", "Jie Zhou", "zhoujie"),
    ("吴婷", "Ting Wu", "wuting"),
    ("孙丽", "Li Sun", "sunli"),
    ("马超", "Chao Ma", "machao"),
    ("朱琳", "Lin Zhu", "zhulin"),
    ("胡军", "Jun Hu", "hujun"),
    ("郭靖", "Jing Guo", "guojing"),
    ("何欢", "Huan He", "hehuan"),
    ("高翔", "Xiang Gao", "gaoxiang"),
    ("林芳", "Fang Lin", "linfang"),
    ("罗斌", "Bin Luo", "luobin"),
    ("郑爽", "Shuang Zheng", "zhengshuang"),
    ("梁晨", "Chen Liang", "liangchen"),
    ("谢娟", "Juan Xie", "xiejuan"),
    ("宋涛", "Tao Song", "songtao"),
    ("唐艺", "Yi Tang", "tangyi"),
    ("韩梅梅", "Meimei Han", "hanmeimei"),
    ("冯雪", "Xue Feng", "fengxue"),
    ("邓超", "Chao Deng", "18002520162"),
    ("曹阳", "Yang Cao", "caoyang"),
    ("欧阳娜娜", "Nana Ouyang", "ouyangnana"),
    ("Zoë 👩‍👩‍👧", "Zoë Li", "zoe.li"),
    ("David Chen", "David Chen", "david.chen"),
    ("Emily Wong", "Emily Wong", "emily.wong"),
    ("Michael Zhang", "Michael Zhang", "michael.zhang"),
    ("Sarah Lin", "Sarah Lin", "sarah.lin"),
    ("Kevin Liu 刘凯文", "Kevin Liu", "kevin.liu"),
    ("Olivia Xu", "Olivia Xu", "olivia.xu"),
    ("James Ho", "James Ho", "13800000017"),
    ("Søren Åberg", "Søren Åberg", "soren.aberg"),
    ("أحمد Ahmed", "Ahmed Al-Farsi", "ahmed.alfarsi"),
]

# (中文, English)
DEPARTMENTS: list[tuple[str, str]] = [
    ("财富管理部", "Wealth Management"),
    ("合规部", "Compliance"),
    ("交易部", "Trading"),
    ("研究所", "Research"),
    ("投资银行部", "Investment Banking"),
    ("运营部", "Operations"),
    ("风险管理部", "Risk Management"),
    ("信息技术部", "IT"),
]

POSITIONS: list[str] = [
    "投资顾问 Investment Advisor",
    "客户经理 Relationship Manager",
    "合规经理 Compliance Manager",
    "交易员 Trader",
    "分析师 Analyst",
    "部门总监 Director",
    "运营专员 Operations Specialist",
    "风控经理 Risk Manager",
]

# WeChat users (wm…): what customers call themselves
WECHAT_CONTACTS: list[str] = [
    "陈先生",
    "刘总",
    "张阿姨",
    "Lily🌸",
    "Tom Becker",
    "小周 Jacky",
    "王女士（老客户）",
    "老李 📈",
    "Mary 陈",
    "赵老板",
    "孙姐",
    "Andy",
    "黄生 (HK)",
    "🍀幸运儿",
    "Nguyễn Văn An",
]

# WeCom users of other corps (wo…): (name, corp_name)
WECOM_CONTACTS: list[tuple[str, str]] = [
    ("周明 Ming Zhou", "晨曦资产管理有限公司"),
    ("Anna Schmidt", "Blue Harbor Partners"),
    ("钱进", "深蓝科技股份有限公司"),
    ("Rahul Mehta", "Lotus Family Office"),
    ("冯律师", "正衡律师事务所"),
    ("Grace Lee", "Blue Harbor Partners"),
    ("郝经理", "华东信托"),
    ("Chris O'Neil", "Northwind Capital"),
]

ROBOTS: list[str] = ["行情播报机器人 📈", "合规提醒 Bot"]

STOCKS = ["贵州茅台 600519", "腾讯控股 0700.HK", "AAPL", "宁德时代 300750", "招商银行 600036", "NVDA", "美团 3690.HK"]
PRODUCTS = ["稳健增值1号", "Global Bond Fund", "中证500指数增强", "安盈货币A", "Asia High Yield USD", "鑫享FOF"]
BONDS = ["24国债01", "UST 10Y", "21万科02", "CGB 2034"]
TIMES = ["明早9点", "下午3点", "周五收盘前", "tomorrow 10am", "EOD", "下周一"]
EMOJI = [
    "👍",
    "🙏",
    "📈",
    "📉",
    "✅",
    "🎉",
    "💼",
    "😂",
    "🤝",
    "👩‍👩‍👧",
    "👨‍💻",
    "🧑🏻‍💼",
    "🏳️‍🌈",
    "👍🏽",
    "❤️‍🔥",
    "🇨🇳",
    "🇭🇰",
]
WECOM_SMILEYS = ["[微笑]", "[强]", "[OK]", "[抱拳]", "[捂脸]", "[玫瑰]"]
SHORT_REPLIES = ["好", "嗯", "收到", "谢谢", "OK", "好的", "👌", "稍等", "可以", "明白"]

TEMPLATES: list[str] = [
    "{name}，{stock}今天{move}了{pct}%，要不要调仓？",
    "客户{client}想赎回{amount}万的{product}，流程怎么走？",
    "Please review the term sheet for {product} before {time}. {emoji}",
    "The {bond} is trading at {price}, 收益率 {pct}% {emoji}",
    "{time}开晨会，记得带上周报 📊",
    "合规提醒：不要在微信里承诺收益，也不要代客操作 🙏",
    "{client}的KYC材料还缺身份证复印件和风险测评问卷",
    "Can you send me the latest NAV of {product}? 客户在问 {smiley}",
    "{stock} 财报超预期，盘后 {move} {pct}% {emoji}",
    "已经把{product}的产品说明书发给客户了 {smiley}",
    "FYI: settlement for the {bond} trade is T+1, amount CNY {amount},000",
    "帮我约一下{client}，{time}电话沟通资产配置方案",
    "{name} 辛苦了 {emoji}{emoji}",
    "Risk limit on {stock} breached by {pct}%, please reduce exposure",
    "客户问能不能保本，我说{product}不保本，历史业绩不代表未来表现",
    "Meeting notes 已上传到微盘，请大家查阅 {emoji}",
    "今天北向资金净流入{amount}亿，{stock}领涨 {emoji}",
    "Thanks {name}! 下次一起吃饭 🍜",
    "{client}刚转了{amount}万过来，麻烦确认一下到账",
    "Market update: {stock} {move} {pct}%, {bond} yield {price}",
]

MOVES = ["涨", "跌", "up", "down", "拉升", "回调"]


@dataclass
class TextCorpus:
    """Fills chat templates from a seeded RNG; cheap enough to call per message."""

    rng: random.Random
    people: list[str]
    clients: list[str]

    def sentence(self) -> str:
        rng = self.rng
        text = rng.choice(TEMPLATES).format(
            name=rng.choice(self.people),
            client=rng.choice(self.clients),
            stock=rng.choice(STOCKS),
            product=rng.choice(PRODUCTS),
            bond=rng.choice(BONDS),
            time=rng.choice(TIMES),
            move=rng.choice(MOVES),
            pct=f"{rng.uniform(0.1, 9.9):.2f}",
            price=f"{rng.uniform(95, 105):.3f}",
            amount=rng.randint(5, 900),
            emoji=rng.choice(EMOJI),
            smiley=rng.choice(WECOM_SMILEYS),
        )
        return text

    def message(self) -> str:
        """One chat message: mostly a sentence, sometimes a short reply or two lines."""
        roll = self.rng.random()
        if roll < 0.15:
            return self.rng.choice(SHORT_REPLIES)
        if roll < 0.25:
            return self.sentence() + "\n" + self.sentence()
        return self.sentence()


LONG_PARAGRAPH = (
    "第一季度投资策略回顾：权益市场在春节后明显修复，沪深300指数上涨约百分之七，"
    "consumer and technology sectors led the rebound while property remained weak. "
    "固收方面，十年期国债收益率下行至2.3%附近，信用利差继续收窄。"
    "We keep an overweight on high-dividend SOEs and short-duration credit. "
)


def long_text(length: int) -> str:
    """A report pasted into chat, exactly ``length`` code points long (case X3)."""
    repeats = length // len(LONG_PARAGRAPH) + 1
    return (LONG_PARAGRAPH * repeats)[:length]


MIXED_SCRIPT_TEXT = "مرحبا، السعر النهائي هو ٣٫٥٪ — 最终报价是3.5%，the final quote is 3.5%, شكرا 谢谢 thanks"
QUOTE_PREFIX = "这是一条引用/回复消息："
