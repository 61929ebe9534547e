"""Hand-written corpora in the shapes real ones come in, and readers of prepare's output
(a module of its own: test files import it by a name no other test folder uses)."""

import json

# A résumé corpus, one character per line with BMES tags and its own label set. Invented
# sentences in the style of company filings; (text, [(start, end, label)]).
RESUME = [
    ("王建国，男，中国国籍，无境外永久居留权。", [(0, 3, "NAME"), (6, 10, "CONT")]),
    ("1972年出生，汉族，中共党员，研究生学历，高级经济师。",
     [(8, 10, "RACE"), (16, 21, "EDU"), (22, 27, "TITLE")]),
    ("现任宁波远航电子股份有限公司董事长兼总经理。",
     [(2, 14, "ORG"), (14, 17, "TITLE"), (18, 21, "TITLE")]),
    ("毕业于浙江大学材料工程专业，获工学硕士学位。",
     [(3, 7, "ORG"), (7, 11, "PRO"), (15, 19, "EDU")]),
    ("曾任温州市财政局副局长。", [(2, 8, "ORG"), (8, 11, "TITLE")]),
    ("刘晓梅女士，籍贯江苏南通，本科学历。", [(0, 3, "NAME"), (8, 12, "LOC"), (13, 17, "EDU")]),
    ("美国国籍，拥有加拿大永久居留权。", [(0, 4, "CONT")]),
    ("2005年至今担任本公司独立董事。", [(12, 16, "TITLE")]),
    ("女。", []),
    ("回族，大专学历，会计师。", [(0, 2, "RACE"), (3, 7, "EDU"), (8, 11, "TITLE")]),
]
RESUME_MAP = "NAME=人名,CONT=国籍,RACE=民族,TITLE=职位,EDU=学历,ORG=组织,PRO=专业,LOC=地点"

# A social-media corpus with BIO tags and dotted sub-types: NAM names, NOM nominal mentions.
WEIBO = [
    ("我和妈妈去了北京", [(2, 4, "PER.NOM"), (6, 8, "GPE.NAM")]),
    ("张小凡今天发微博说很开心", [(0, 3, "PER.NAM")]),
    ("这家公司的老板人真好", [(2, 4, "ORG.NOM"), (5, 7, "PER.NOM")]),
    ("今天天气不错哈哈", []),
    ("上海的朋友们晚安", [(0, 2, "GPE.NAM"), (3, 5, "PER.NOM")]),
    ("周末去西湖边走走", [(3, 5, "LOC.NAM")]),
    ("李娜和她的教练都来了", [(0, 2, "PER.NAM"), (5, 7, "PER.NOM")]),
    ("我们学校的食堂太难吃了", [(2, 4, "ORG.NOM"), (5, 7, "LOC.NOM")]),
]
WEIBO_MAP = ("PER.NAM=人名,PER.NOM=泛指人称,GPE.NAM=地理实体,LOC.NAM=地点,LOC.NOM=泛指地点,"
             "ORG.NOM=泛指组织")


def conll_text(sentences, scheme="BIO", sep=" "):
    """Sentences as character-per-line CoNLL in BIO or BMES."""
    out = []
    for text, spans in sentences:
        tags = ["O"] * len(text)
        for s, e, label in spans:
            if scheme == "BMES":
                if e - s == 1:
                    tags[s] = f"S-{label}"
                else:
                    tags[s], tags[e - 1] = f"B-{label}", f"E-{label}"
                    for i in range(s + 1, e - 1):
                        tags[i] = f"M-{label}"
            else:
                tags[s] = f"B-{label}"
                for i in range(s + 1, e):
                    tags[i] = f"I-{label}"
        out.extend(f"{c}{sep}{t}" for c, t in zip(text, tags))
        out.append("")
    return "\n".join(out) + "\n"


def ccfbdci_line(text, spans):
    return json.dumps({"text": text, "entities": [
        {"start_idx": s, "end_idx": e, "entity_label": label, "entity_text": text[s:e],
         "entity_names": []} for s, e, label in spans]}, ensure_ascii=False)


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def stats_of(out):
    return json.loads((out / "stats.json").read_text(encoding="utf-8"))
